"""A small convolutional network on the digits data (8x8 images, 10 classes).

    Conv2D(1 -> 16, 3x3, same, relu) -> Conv2D(16 -> 32, 3x3, same, relu) -> MaxPool2D(2)
    -> Flatten -> Dense(512 -> 10)

Trained with Adam on the fixed 80/20 split of :func:`fastgrad.examples.data.load_digits_split`,
each epoch on the training images plus a copy shifted by one random pixel (:func:`~fastgrad.examples.data.shifted`).
Run ``python -m fastgrad.examples.cnn``.

``batchnorm=True`` (``python -m fastgrad.examples.cnn --batchnorm``): each convolution
(without bias, the normalisation's beta takes its place) is followed by BatchNorm2D
and then the ReLU; the test accuracy is measured in evaluation mode, on the running
statistics.
"""

from __future__ import annotations

import time

import numpy as np

from .. import Activation, Adam, BatchNorm2D, CrossEntropyLoss, Dense, Flatten, Sequential
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


def train(epochs=15, batch_size=32, lr=2e-3, seed=0, progress=True, dtype=np.float32, decay=0.85, batchnorm=False) -> dict:
    """Train the CNN with Adam; returns test_accuracy, seconds_per_epoch, history, model, seconds.

    The learning rate starts at ``lr`` and is multiplied by ``decay`` after every
    epoch (the last epochs then refine instead of jumping between minima).  The
    data split is fixed (seed 0); ``seed`` changes the initialisation, the
    shifts and the batch order only.
    """
    x_train, y_train, x_test, y_test = load_digits_split(seed=0, dtype=dtype)
    # one global standardisation keeps the images' spatial structure for the convolutions
    mean, std = x_train.mean(), x_train.std()
    x_train = ((x_train - mean) / std).astype(dtype).reshape(-1, 1, 8, 8)
    x_test = ((x_test - mean) / std).astype(dtype).reshape(-1, 1, 8, 8)
    model = build(seed, dtype, batchnorm)
    loss = CrossEntropyLoss()
    optimizer = Adam(model, lr)
    history: dict = {}
    rng = np.random.default_rng(seed)
    y_twice = np.concatenate([y_train, y_train])
    start = time.perf_counter()
    for epoch in range(epochs):
        x_epoch = np.concatenate([x_train, shifted(x_train, rng)])
        h = model.fit(
            x_epoch, y_twice, loss, optimizer, epochs=1, batch_size=batch_size,
            validation_data=(x_test, y_test), progress=progress, seed=seed + epoch,
        )
        for key, values in h.items():
            history.setdefault(key, []).extend(values)
        optimizer.lr *= decay
    return summarize(model, history, x_test, y_test, loss, start)


if __name__ == "__main__":  # pragma: no cover
    import sys

    result = train(batchnorm="--batchnorm" in sys.argv[1:])
    print(f"test accuracy {result['test_accuracy']:.4f}, {result['seconds_per_epoch']:.2f} s/epoch")
