"""The vectorised NumPy peer: fastgrad's NumPy oracle (:mod:`fastgrad.reference`) timed as a library.

Every matmul goes to BLAS (``@`` / ``einsum(optimize=True)``); convolution
contracts an ``as_strided`` window view of the padded input; the LSTM is the
textbook loop, one product per step, with manual BPTT.  The same functions are
the test suite's oracle, and this peer is the reference the worker compares
the other peers' outputs with.

Peer protocol (shared by peer_fastgrad and peer_torch): ``build(case, dtype, inputs)``
returns an object with ``forward()`` and ``fwdbwd()`` (the timed calls, returning
the library's own objects) and the module function ``to_numpy(result)`` that turns
what they return into a list of NumPy arrays for the correctness guard:

* dense / conv2d / lstm: forward -> [y]; fwdbwd -> [dx, dW (dK), db (dB)]
* softmax: forward -> [y]; fwdbwd -> [dx]
* train_*: forward -> [logits] (inference); fwdbwd -> one SGD step, [loss, *params after the step]
"""

from __future__ import annotations

import numpy as np

from fastgrad import reference as R

from .cases import CNN_BLOCKS, MLP_LAYERS, TRAIN_LR

NAME = "numpy"


def version() -> str:
    return np.__version__


def to_numpy(result) -> list:
    return [np.array(r, copy=True) for r in result]


_ONE = (1, 1)
_NO_PAD = ((0, 0), (0, 0))


# --------------------------------------------------------------------------
# benches
# --------------------------------------------------------------------------


class _Dense:
    def __init__(self, inp):
        self.x, self.W, self.b, self.dy = inp["x"], inp["W"], inp["b"], inp["dy"]

    def forward(self):
        return [R.dense(self.x, self.W, self.b, "identity")[0]]

    def fwdbwd(self):
        _, z = R.dense(self.x, self.W, self.b, "identity")
        return list(R.dense_grads(self.dy, self.x, self.W, z, "identity"))


class _Conv:
    def __init__(self, inp):
        self.x, self.K, self.B, self.dy = inp["x"], inp["K"], inp["B"], inp["dy"]

    def forward(self):
        return [R.conv_ref(self.x, self.K, self.B, _ONE, _NO_PAD, _ONE, 1)[0]]

    def fwdbwd(self):
        R.conv_ref(self.x, self.K, self.B, _ONE, _NO_PAD, _ONE, 1)
        return list(R.conv_grad_ref(self.dy, self.x, self.K, self.B, _ONE, _NO_PAD, _ONE, 1))


class _LSTM:
    def __init__(self, inp):
        self.x, self.W, self.b, self.dy = inp["x"], inp["W"], inp["b"], inp["dy"]

    def forward(self):
        return [R.lstm_forward(self.x, self.W, self.b)[0]]

    def fwdbwd(self):
        _, _, saved = R.lstm_forward(self.x, self.W, self.b)
        return list(R.lstm_backward(self.dy, saved)[:3])


class _Softmax:
    def __init__(self, inp):
        self.x, self.dy = inp["x"], inp["dy"]

    def forward(self):
        return [R.softmax(self.x)]

    def fwdbwd(self):
        return [R.softmax_backward(self.dy, R.softmax(self.x))]


class _TrainMLP:
    def __init__(self, inp):
        self.x, self.labels = inp["x"], inp["labels"]
        self.params = [p.copy() for p in inp["params"]]

    def _forward(self):
        h, saved = self.x, []
        for li, (_, _, act) in enumerate(MLP_LAYERS):
            y, z = R.dense(h, self.params[2 * li], self.params[2 * li + 1], act)
            saved.append((h, z))
            h = y
        return h, saved

    def forward(self):
        return [self._forward()[0]]

    def fwdbwd(self):
        logits, saved = self._forward()
        loss, dh = R.cross_entropy(logits, self.labels)
        grads = [None] * len(self.params)
        for li in range(len(MLP_LAYERS) - 1, -1, -1):
            h_in, z = saved[li]
            dh, grads[2 * li], grads[2 * li + 1] = R.dense_grads(dh, h_in, self.params[2 * li], z, MLP_LAYERS[li][2])
        for p, g in zip(self.params, grads):
            p -= p.dtype.type(TRAIN_LR) * g
        return [loss, *self.params]


class _TrainCNN:
    def __init__(self, inp):
        self.x, self.labels = inp["x"], inp["labels"]
        self.params = [p.copy() for p in inp["params"]]

    def _forward(self):
        h, saved = self.x, []
        for bi, (_, _, _, pad) in enumerate(CNN_BLOCKS):
            pads = ((pad, pad), (pad, pad))
            y, z = R.conv_ref(h, self.params[2 * bi], self.params[2 * bi + 1], _ONE, pads, _ONE, 1, "relu")
            pooled, pool_back = R.pool_ref(y, (2, 2), (2, 2), (0, 0), "max")
            saved.append((h, z, pads, pool_back))
            h = pooled
        flat = h.reshape(h.shape[0], -1)
        logits, _ = R.dense(flat, self.params[-2], self.params[-1], "identity")
        return logits, (saved, flat, h.shape)

    def forward(self):
        return [self._forward()[0]]

    def fwdbwd(self):
        logits, (saved, flat, pooled_shape) = self._forward()
        loss, dlogits = R.cross_entropy(logits, self.labels)
        grads = [None] * len(self.params)
        dflat, grads[-2], grads[-1] = R.dense_grads(dlogits, flat, self.params[-2], logits, "identity")
        dh = dflat.reshape(pooled_shape)
        for bi in range(len(CNN_BLOCKS) - 1, -1, -1):
            h_in, z, pads, pool_back = saved[bi]
            dz = pool_back(dh) * (z > 0)
            K, B = self.params[2 * bi], self.params[2 * bi + 1]
            dh, grads[2 * bi], grads[2 * bi + 1] = R.conv_grad_ref(dz, h_in, K, B, _ONE, pads, _ONE, 1)
        for p, g in zip(self.params, grads):
            p -= p.dtype.type(TRAIN_LR) * g
        return [loss, *self.params]


_BENCHES = {"dense": _Dense, "conv2d": _Conv, "lstm": _LSTM, "softmax": _Softmax, "train_mlp": _TrainMLP, "train_cnn": _TrainCNN}


def build(case, dtype, inputs):
    return _BENCHES[case.op](inputs)
