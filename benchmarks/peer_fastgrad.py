"""The fastgrad peer: the public functional API (DESIGN section 2) and the object layer.

The peer protocol is described in :mod:`benchmarks.peer_numpy`.
"""

from __future__ import annotations

import numpy as np

import fastgrad as fg
import fastgrad.functional as F

from .cases import CNN_BLOCKS, CNN_DENSE, MLP_LAYERS, TRAIN_LR

NAME = "fastgrad"


def version() -> str:
    return fg.__version__


def to_numpy(result) -> list:
    return [np.array(r, copy=True) for r in result]


class _Dense:
    def __init__(self, inp):
        self.fwd, self.bwd = F.dense_forward, F.dense_backward
        self.x, self.W, self.b, self.dy = inp["x"], inp["W"], inp["b"], inp["dy"]

    def forward(self):
        return [self.fwd(self.x, self.W, self.b, "identity")[0]]

    def fwdbwd(self):
        _, cache = self.fwd(self.x, self.W, self.b, "identity")
        return list(self.bwd(self.dy, cache))


class _Conv:
    def __init__(self, inp):
        self.fwd, self.bwd = F.conv_forward, F.conv_backward
        self.x, self.K, self.B, self.dy = inp["x"], inp["K"], inp["B"], inp["dy"]

    def forward(self):
        return [self.fwd(self.x, self.K, self.B, stride=1, padding=0)[0]]

    def fwdbwd(self):
        _, cache = self.fwd(self.x, self.K, self.B, stride=1, padding=0)
        return list(self.bwd(self.dy, cache))


class _LSTM:
    def __init__(self, inp):
        self.fwd, self.bwd = F.lstm_forward, F.lstm_backward
        self.x, self.W, self.b, self.dy = inp["x"], inp["W"], inp["b"], inp["dy"]

    def forward(self):
        (y, _), _ = self.fwd(self.x, self.W, self.b)
        return [y]

    def fwdbwd(self):
        _, cache = self.fwd(self.x, self.W, self.b)
        dx, dW, db, _, _ = self.bwd(self.dy, cache)
        return [dx, dW, db]


class _Softmax:
    def __init__(self, inp):
        self.fwd, self.bwd = F.softmax, F.softmax_backward
        self.x, self.dy = inp["x"], inp["dy"]

    def forward(self):
        return [self.fwd(self.x)]

    def fwdbwd(self):
        return [self.bwd(self.dy, self.fwd(self.x))]


class _Train:
    """One training step exactly as a user writes it (DESIGN section 2)."""

    def __init__(self, model, inp):
        self.model = model
        params = list(model.params.values())
        if [p.shape for p in params] != [p.shape for p in inp["params"]]:
            raise RuntimeError(f"fastgrad model parameter shapes {[p.shape for p in params]} differ from the benchmark's")
        for p, src in zip(params, inp["params"]):
            p[...] = src
        self.x, self.labels = inp["x"], inp["labels"]
        self.loss = fg.CrossEntropyLoss()
        self.opt = fg.SGD(model, TRAIN_LR)

    def forward(self):
        return [self.model.forward(self.x)]

    def fwdbwd(self):
        # zero_grad, forward, loss, backward without the input's dL/dx (backward_params), SGD update
        value = self.model.train_step(self.x, self.labels, self.loss, self.opt)
        return [value, *self.model.params.values()]


def _mlp(dtype):
    return fg.Sequential(*[fg.Dense(n_in, n_out, act, dtype=dtype, seed=0) for n_in, n_out, act in MLP_LAYERS])


def _cnn(dtype):
    layers = []
    for c_in, c_out, k, pad in CNN_BLOCKS:
        layers += [fg.Conv2D(c_in, c_out, k, padding=pad, activation="relu", dtype=dtype, seed=0), fg.MaxPool2D(2)]
    layers += [fg.Flatten(), fg.Dense(*CNN_DENSE, dtype=dtype, seed=0)]
    return fg.Sequential(*layers)


def build(case, dtype, inputs):
    if case.op == "dense":
        return _Dense(inputs)
    if case.op == "conv2d":
        return _Conv(inputs)
    if case.op == "lstm":
        return _LSTM(inputs)
    if case.op == "softmax":
        return _Softmax(inputs)
    if case.op == "train_mlp":
        return _Train(_mlp(dtype), inputs)
    if case.op == "train_cnn":
        return _Train(_cnn(dtype), inputs)
    raise ValueError(f"unknown op {case.op!r}")
