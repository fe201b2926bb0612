"""An LSTM reads each 8x8 digit image row by row (T = 8 steps of 8 pixels) and classifies it.

    LSTM(8, hidden, batch_first=True, return_sequences=False) -> Dense(hidden, 10)

The final hidden state h_T summarises the image; the Dense head maps it to
class logits.  Data: scikit-learn's offline digits, the same fixed 80/20 split
as the other digits examples.
"""

from __future__ import annotations

import time

import numpy as np

from .. import Adam, CrossEntropyLoss, Dense, Sequential
from ..layers.lstm import LSTM
from .data import load_digits_split, summarize


def build(hidden=64, seed=0, dtype=np.float32):
    return Sequential(
        LSTM(8, hidden, batch_first=True, return_sequences=False, dtype=dtype, seed=seed),
        Dense(hidden, 10, dtype=dtype, seed=seed + 1),
    )


def train(epochs=15, batch_size=32, hidden=64, lr=5e-3, seed=0, progress=True, dtype=np.float32) -> dict:
    """Train with Adam; returns test_accuracy, seconds_per_epoch, history, model.

    The split is fixed; ``seed`` changes the initialisation and batch order only.
    """
    x_train, y_train, x_test, y_test = load_digits_split(seed=0, dtype=dtype)
    # (N, 64) -> (N, T=8 rows, 8 pixels), centred: pixel values in [-0.5, 0.5]
    x_train = (x_train.reshape(-1, 8, 8) - 0.5).astype(dtype)
    x_test = (x_test.reshape(-1, 8, 8) - 0.5).astype(dtype)
    model = build(hidden, seed, dtype)
    loss = CrossEntropyLoss()
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, loss, Adam(model, lr), epochs=epochs, batch_size=batch_size,
        validation_data=(x_test, y_test), progress=progress, seed=seed, clip_norm=5.0,
    )
    return summarize(model, history, x_test, y_test, loss, start)


if __name__ == "__main__":  # pragma: no cover
    result = train()
    print(f"test accuracy {result['test_accuracy']:.4f}, {result['seconds_per_epoch']:.2f} s/epoch")
