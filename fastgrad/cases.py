"""One table of cases, shared by ``python -m fastgrad check``, the test suite and ``benchmarks/``.

* :data:`LAYER_CASES`: one small configuration of every layer type (and a few
  option combinations), the gradient checks run over them (the ``check``
  command in float64, the tests' injected-error checks in float32);
* :data:`SHAPES` and the training-step architectures: the benchmark shapes,
  which the benchmark runner times and the tests use for their larger cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# --------------------------------------------------------------------------
# layer configurations (gradient checks)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCase:
    """A layer built by ``build(dtype)`` and a standard-normal input of ``input_shape``.

    ``shift`` moves the input off kinks (ReLU at 0, max-pool ties) where a
    finite difference would straddle one.  ``indices`` > 0: the input is
    integer indices in [0, indices) instead (Embedding).
    """

    label: str
    build: Callable
    input_shape: tuple
    shift: float = 0.0
    indices: int = 0

    def layer(self, dtype=np.float64):
        return self.build(np.dtype(dtype))

    def input(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.indices:
            return rng.integers(0, self.indices, self.input_shape)
        return rng.standard_normal(self.input_shape) + self.shift


def _moved(layer, eval_mode=False):
    """A norm layer with gamma, beta (and running statistics) away from their start, so an error in either shows."""
    rng = np.random.default_rng(16)
    layer.params["gamma"][...] = 1 + 0.5 * rng.standard_normal(layer.params["gamma"].shape)
    layer.params["beta"][...] = rng.standard_normal(layer.params["beta"].shape)
    if eval_mode:
        layer.buffers["running_mean"][...] = rng.standard_normal(layer.buffers["running_mean"].shape)
        layer.buffers["running_var"][...] = 0.5 + rng.random(layer.buffers["running_var"].shape)
        layer.eval()
    return layer


def _cases() -> list:
    import fastgrad as fg

    cases = [
        LayerCase(f"Dense[{act}]", lambda dt, act=act: fg.Dense(5, 4, act, dtype=dt, seed=1), (3, 5))
        for act in fg.ACTIVATIONS
    ]
    cases += [
        LayerCase("Dense[no bias]", lambda dt: fg.Dense(5, 4, bias=False, dtype=dt, seed=2), (3, 5)),
        LayerCase("Activation[gelu]", lambda dt: fg.Activation("gelu"), (3, 4)),
        LayerCase("Softmax", lambda dt: fg.Softmax(), (3, 6)),
        LayerCase("Softmax[axis=0]", lambda dt: fg.Softmax(axis=0), (4, 3)),
        LayerCase("LogSoftmax", lambda dt: fg.LogSoftmax(), (3, 6)),
        LayerCase("Flatten", lambda dt: fg.Flatten(), (2, 3, 2)),
        LayerCase("Conv1D[stride 2, same]",
                  lambda dt: fg.Conv1D(2, 3, 3, stride=2, padding="same", activation="tanh", dtype=dt, seed=6), (2, 2, 7)),
        LayerCase("Conv2D[dilation, groups]",
                  lambda dt: fg.Conv2D(4, 4, 3, padding=1, dilation=2, groups=2, activation="elu", dtype=dt, seed=7),
                  (2, 4, 6, 5)),
        LayerCase("Conv2D[untied bias]",
                  lambda dt: fg.Conv2D(2, 3, (2, 3), stride=(1, 2), bias="untied", input_size=(5, 6), dtype=dt, seed=8),
                  (2, 2, 5, 6)),
        LayerCase("MaxPool1D", lambda dt: fg.MaxPool1D(2), (2, 3, 6)),
        LayerCase("MaxPool2D", lambda dt: fg.MaxPool2D(2), (2, 3, 4, 4)),
        LayerCase("AvgPool1D[pad]", lambda dt: fg.AvgPool1D(3, stride=2, padding=1), (2, 3, 7)),
        LayerCase("AvgPool2D", lambda dt: fg.AvgPool2D(2), (2, 2, 4, 4)),
        LayerCase("LSTM", lambda dt: fg.LSTM(3, 4, dtype=dt, seed=11), (5, 2, 3)),
        LayerCase("LSTM[2 layers, bidir]",
                  lambda dt: fg.LSTM(3, 3, num_layers=2, bidirectional=True, dtype=dt, seed=12), (4, 2, 3)),
        LayerCase("LSTM[gelu gates, last h]",
                  lambda dt: fg.LSTM(3, 4, return_sequences=False, activations={"n": "gelu", "h": "softplus"}, dtype=dt, seed=13),
                  (6, 2, 3)),
        LayerCase("Sequential[CNN]", lambda dt: fg.Sequential(
            fg.Conv2D(1, 3, 3, padding="same", activation="relu", dtype=dt, seed=9),
            fg.MaxPool2D(2),
            fg.Flatten(),
            fg.Dense(12, 4, dtype=dt, seed=10),
        ), (2, 1, 4, 4), shift=0.05),
        LayerCase("Dense[N-D input]", lambda dt: fg.Dense(4, 3, "gelu_erf", dtype=dt, seed=14), (2, 3, 4)),
        LayerCase("Embedding", lambda dt: fg.Embedding(6, 3, dtype=dt, seed=15), (2, 3), indices=6),
        LayerCase("Dropout[eval]", lambda dt: fg.Dropout(0.5).eval(), (3, 4)),  # training draws a new mask per forward
        LayerCase("LayerNorm", lambda dt: _moved(fg.LayerNorm((2, 3), dtype=dt)), (2, 2, 3)),
        LayerCase("BatchNorm1D[train]", lambda dt: _moved(fg.BatchNorm1D(3, dtype=dt)), (4, 3, 2)),
        LayerCase("BatchNorm2D[eval]", lambda dt: _moved(fg.BatchNorm2D(2, dtype=dt), eval_mode=True), (2, 2, 3, 3)),
        LayerCase("Sequential[MLP]", lambda dt: fg.Sequential(
            fg.Dense(6, 8, "tanh", dtype=dt, seed=3),
            fg.Dense(8, 5, "silu", dtype=dt, seed=4),
            fg.Dense(5, 3, dtype=dt, seed=5),
            fg.Softmax(),
        ), (4, 6)),
    ]
    return cases


class _LazyCases:
    """The case list, built on first use (building layers imports the whole package)."""

    def __init__(self):
        self._cases = None

    def _get(self) -> list:
        if self._cases is None:
            self._cases = _cases()
        return self._cases

    def __iter__(self):
        return iter(self._get())

    def __len__(self):
        return len(self._get())

    def __getitem__(self, i):
        return self._get()[i]


#: every built-in layer type at least once (tests/test_gradcheck.py checks the coverage)
LAYER_CASES = _LazyCases()


# --------------------------------------------------------------------------
# benchmark shapes
# --------------------------------------------------------------------------

#: op -> size label -> shape (the meaning of the shape tuple is in SHAPE_NAMES)
SHAPES = {
    "dense": {"S": (32, 128, 128), "M": (128, 512, 512), "L": (512, 1024, 1024)},
    "conv2d": {"S": (32, 1, 28, 8, 5), "M": (32, 16, 32, 32, 3), "L": (16, 64, 28, 64, 3)},
    "lstm": {"S": (50, 32, 32, 64), "M": (100, 16, 128, 128), "L": (35, 20, 256, 256)},
    "softmax": {"S": (64, 10), "M": (256, 1000), "L": (32, 50000)},
    # the training steps have one size: a batch of 32 digits images
    "train_mlp": {"S": (32,)},
    "train_cnn": {"S": (32,)},
}
SHAPE_NAMES = {
    "dense": "N, in, out",
    "conv2d": "N, C, H=W, M, k",
    "lstm": "T, N, I, H",
    "softmax": "N, n",
    "train_mlp": "batch",
    "train_cnn": "batch",
}

#: the digits MLP (fastgrad/examples/mlp.py): (in, out, activation) per Dense layer
MLP_LAYERS = ((64, 128, "relu"), (128, 64, "relu"), (64, 10, "identity"))
#: the digits CNN, 8x8 single-channel images:
#: Conv2D(1,16,3,padding=1,relu) -> MaxPool2D(2) -> Conv2D(16,32,3,padding=1,relu) -> MaxPool2D(2)
#: -> Flatten -> Dense(128,10).  Each entry: (C_in, C_out, k, padding) of one conv+relu+pool block.
CNN_BLOCKS = ((1, 16, 3, 1), (16, 32, 3, 1))
CNN_DENSE = (128, 10)
CNN_IMAGE = (1, 8, 8)
#: learning rate of the plain SGD step in the training cases (no momentum)
TRAIN_LR = 0.01
