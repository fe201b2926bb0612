"""The fastgrad peer: the public functional API (DESIGN section 2) and the object layer.

Ops that are still being written (conv, LSTM) are looked up in
``fastgrad.functional`` first and then in their private modules
(``fastgrad._functional_conv``, ``fastgrad._functional_lstm``); when neither has
them the case raises :class:`benchmarks.cases.NotAvailable` and is reported "n/a".
The peer protocol is described in :mod:`benchmarks.peer_numpy`.
"""

from __future__ import annotations

import importlib

import numpy as np

from .cases import CNN_BLOCKS, CNN_DENSE, MLP_LAYERS, TRAIN_LR, NotAvailable

NAME = "fastgrad"


def version() -> str:
    import fastgrad

    return fastgrad.__version__


def to_numpy(result) -> list:
    return [np.array(r, copy=True) for r in result]


def _find(name: str, modules: tuple):
    """The first module in ``modules`` that has ``name`` (imported lazily), else NotAvailable."""
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    raise NotAvailable(f"fastgrad has no {name} yet (looked in {', '.join(modules)})")


def _functional(name: str, private: str):
    return _find(name, ("fastgrad.functional", f"fastgrad.{private}"))


def _layer(name: str, private: str):
    return _find(name, ("fastgrad", f"fastgrad.layers.{private}"))


class _Dense:
    def __init__(self, inp):
        self.fwd, self.bwd = _functional("dense_forward", "functional"), _functional("dense_backward", "functional")
        self.x, self.W, self.b, self.dy = inp["x"], inp["W"], inp["b"], inp["dy"]

    def forward(self):
        return [self.fwd(self.x, self.W, self.b, "identity")[0]]

    def fwdbwd(self):
        _, cache = self.fwd(self.x, self.W, self.b, "identity")
        return list(self.bwd(self.dy, cache))


class _Conv:
    def __init__(self, inp):
        self.fwd, self.bwd = _functional("conv_forward", "_functional_conv"), _functional("conv_backward", "_functional_conv")
        self.x, self.K, self.B, self.dy = inp["x"], inp["K"], inp["B"], inp["dy"]

    def forward(self):
        return [self.fwd(self.x, self.K, self.B, stride=1, padding=0)[0]]

    def fwdbwd(self):
        _, cache = self.fwd(self.x, self.K, self.B, stride=1, padding=0)
        return list(self.bwd(self.dy, cache))


class _LSTM:
    def __init__(self, inp):
        self.fwd, self.bwd = _functional("lstm_forward", "_functional_lstm"), _functional("lstm_backward", "_functional_lstm")
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
        self.fwd, self.bwd = _functional("softmax", "functional"), _functional("softmax_backward", "functional")
        self.x, self.dy = inp["x"], inp["dy"]

    def forward(self):
        return [self.fwd(self.x)]

    def fwdbwd(self):
        return [self.bwd(self.dy, self.fwd(self.x))]


class _Train:
    """One training step exactly as a user writes it (DESIGN section 2)."""

    def __init__(self, model, inp):
        import fastgrad as fg

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
        self.model.zero_grad()
        out = self.model.forward(self.x)
        value = self.loss(out, self.labels)
        self.model.backward(self.loss.backward())
        self.opt.step()
        return [value, *self.model.params.values()]


def _mlp(dtype):
    import fastgrad as fg

    return fg.Sequential(*[fg.Dense(n_in, n_out, act, dtype=dtype, seed=0) for n_in, n_out, act in MLP_LAYERS])


def _cnn(dtype):
    import fastgrad as fg

    conv2d, maxpool2d = _layer("Conv2D", "conv"), _layer("MaxPool2D", "pool")
    layers = []
    for c_in, c_out, k, pad in CNN_BLOCKS:
        layers += [conv2d(c_in, c_out, k, padding=pad, activation="relu", dtype=dtype, seed=0), maxpool2d(2)]
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
