"""A small convolutional network on the digits data (8x8 images, 10 classes).

    Conv2D(1 -> 16, 3x3, same, relu) -> Conv2D(16 -> 32, 3x3, same, relu) -> MaxPool2D(2)
    -> Flatten -> Dense(512 -> 10)

Trained with Adam on the fixed 80/20 split of :func:`fastgrad.examples.data.load_digits_split`,
each epoch on the training images plus a copy shifted by one random pixel (:func:`~fastgrad.examples.data.shifted`),
with an exponential learning-rate schedule and early stopping on a validation set held out of the training images.
Run ``python -m fastgrad.examples.cnn``.

``batchnorm=True`` (``python -m fastgrad.examples.cnn --batchnorm``): each convolution
(without bias, the normalisation's beta takes its place) is followed by BatchNorm2D
and then the ReLU; the test accuracy is measured in evaluation mode, on the running
statistics.
"""

from __future__ import annotations

import time

import numpy as np

from .. import Activation, Adam, BatchNorm2D, CrossEntropyLoss, Dense, EarlyStopping, ExponentialLR, Flatten, Sequential
from ..layers.conv import Conv2D
from ..layers.pool import MaxPool2D
from .data import load_digits_split, shifted, summarize


def build(seed=0, dtype=np.float32, batchnorm=False):
    if batchnorm:
        return Sequential(
            Conv2D(1, 16, 3, padding="same", bias=None, dtype=dtype, seed=seed),
            BatchNorm2D(16, dtype=dtype),
            Activation("relu"),
            Conv2D(16, 32, 3, padding="same", bias=None, dtype=dtype, seed=seed + 1),
            BatchNorm2D(32, dtype=dtype),
            Activation("relu"),
            MaxPool2D(2),
            Flatten(),
            Dense(32 * 4 * 4, 10, dtype=dtype, seed=seed + 2),
        )
    return Sequential(
        Conv2D(1, 16, 3, padding="same", activation="relu", dtype=dtype, seed=seed),
        Conv2D(16, 32, 3, padding="same", activation="relu", dtype=dtype, seed=seed + 1),
        MaxPool2D(2),
        Flatten(),
        Dense(32 * 4 * 4, 10, dtype=dtype, seed=seed + 2),
    )


def with_shifted_copy(x, y, rng):
    """``fit``'s per-epoch augmentation: the images plus one copy, each moved by a random pixel."""
    return np.concatenate([x, shifted(x, rng)]), np.concatenate([y, y])


def validation_split(x, y, fraction=0.1):
    """A fixed stratified ``fraction`` of the training images for early stopping (the test set stays unseen)."""
    order = np.random.default_rng(0).permutation(len(y))
    keep = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = order[y[order] == label]
        keep[members[: int(round(fraction * len(members)))]] = True
    return x[~keep], y[~keep], x[keep], y[keep]


def train(
    epochs=20, batch_size=32, lr=2e-3, seed=0, progress=True, dtype=np.float32, decay=0.85, patience=4, batchnorm=False,
) -> dict:
    """Train the CNN with Adam; returns test_accuracy, seconds_per_epoch, history, model, seconds.

    The learning rate starts at ``lr`` and is multiplied by ``decay`` after every
    epoch (``ExponentialLR``: the last epochs refine instead of jumping between
    minima); ``EarlyStopping`` ends training when the validation loss has not
    improved for ``patience`` epochs and puts the best epoch's weights back.
    The data split is fixed (seed 0); ``seed`` changes the initialisation, the
    shifts and the batch order only.
    """
    x_train, y_train, x_test, y_test = load_digits_split(seed=0, dtype=dtype)
    # one global standardisation keeps the images' spatial structure for the convolutions
    mean, std = x_train.mean(), x_train.std()
    x_train = ((x_train - mean) / std).astype(dtype).reshape(-1, 1, 8, 8)
    x_test = ((x_test - mean) / std).astype(dtype).reshape(-1, 1, 8, 8)
    x_fit, y_fit, x_val, y_val = validation_split(x_train, y_train)
    model = build(seed, dtype, batchnorm)
    loss = CrossEntropyLoss()
    optimizer = Adam(model, lr)
    callbacks = [ExponentialLR(optimizer, gamma=decay), EarlyStopping(monitor="val_loss", patience=patience, restore_best=True)]
    start = time.perf_counter()
    history = model.fit(
        x_fit, y_fit, loss, optimizer, epochs=epochs, batch_size=batch_size, validation_data=(x_val, y_val),
        progress=progress, seed=seed, augment=with_shifted_copy, callbacks=callbacks,
    )
    return summarize(model, history, x_test, y_test, loss, start)


if __name__ == "__main__":  # pragma: no cover
    import sys

    result = train(batchnorm="--batchnorm" in sys.argv[1:])
    print(f"test accuracy {result['test_accuracy']:.4f}, {result['seconds_per_epoch']:.2f} s/epoch")
