"""The vectorised NumPy peer: what a careful NumPy programmer would write.

Every matmul goes to BLAS (``@``); convolution is im2col through an
``as_strided`` window view plus one GEMM; the LSTM does the input projection of
all time steps in one GEMM and one small GEMM per step, with manual BPTT.  It is
also the reference the worker compares the other peers' outputs with.

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
from numpy.lib.stride_tricks import as_strided

from .cases import CNN_BLOCKS, MLP_LAYERS, TRAIN_LR

NAME = "numpy"


def version() -> str:
    return np.__version__


def to_numpy(result) -> list:
    return [np.array(r, copy=True) for r in result]


# --------------------------------------------------------------------------
# building blocks (also used by the training steps)
# --------------------------------------------------------------------------


def _sigmoid(z):
    # 0.5 tanh(z/2) + 0.5: no overflow warnings for large |z|, unlike 1 / (1 + exp(-z))
    out = np.tanh(0.5 * z)
    out *= 0.5
    out += 0.5
    return out


def _im2col(x, k, pad):
    """x (N, C, H, W) -> cols (N*Ho*Wo, C*k*k) (a copy), the padded x and (Ho, Wo); stride 1."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, w = x.shape
    ho, wo = h - k + 1, w - k + 1
    s_n, s_c, s_h, s_w = x.strides
    windows = as_strided(x, (n, ho, wo, c, k, k), (s_n, s_h, s_w, s_c, s_h, s_w), writeable=False)
    return windows.reshape(n * ho * wo, c * k * k), x.shape, (ho, wo)


def conv_forward(x, K, B, pad=0, relu=False):
    """Z = B + X (star) K as one GEMM over im2col columns; returns (y, z, cache)."""
    m, _, k, _ = K.shape
    cols, xp_shape, (ho, wo) = _im2col(x, k, pad)
    z2 = cols @ K.reshape(m, -1).T  # (N*Ho*Wo, M)
    z2 += B
    n = x.shape[0]
    z = np.ascontiguousarray(z2.reshape(n, ho, wo, m).transpose(0, 3, 1, 2))
    y = np.maximum(z, 0) if relu else z
    return y, z, (cols, xp_shape, pad, K)


def conv_backward(dz, cache):
    """dK = dZ cols^T, dB = sum dZ, dX = col2im(dZ K) (k*k shifted adds); returns (dx, dK, dB)."""
    cols, (n, c, hp, wp), pad, K = cache
    m, _, k, _ = K.shape
    ho, wo = dz.shape[2:]
    dz2 = dz.transpose(0, 2, 3, 1).reshape(-1, m)
    dK = (dz2.T @ cols).reshape(K.shape)
    dB = dz.sum(axis=(0, 2, 3))
    dcols = (dz2 @ K.reshape(m, -1)).reshape(n, ho, wo, c, k, k)
    dxp = np.zeros((n, c, hp, wp), dz.dtype)
    for i in range(k):
        for j in range(k):
            dxp[:, :, i : i + ho, j : j + wo] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    dx = dxp[:, :, pad : hp - pad, pad : wp - pad] if pad else dxp
    return dx, dK, dB


def maxpool2_forward(x):
    """2x2 max pooling, stride 2; ties go to the first element in row-major window order."""
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    arg = win.argmax(axis=-1)
    y = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return y, (arg, x.shape)


def maxpool2_backward(dy, cache):
    arg, (n, c, h, w) = cache
    dwin = np.zeros((n, c, h // 2, w // 2, 4), dy.dtype)
    np.put_along_axis(dwin, arg[..., None], dy[..., None], axis=-1)
    return dwin.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def cross_entropy(logits, labels):
    """Mean cross-entropy from logits and d loss / d logits = (softmax - onehot) / N."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    rows = np.arange(n)
    loss = np.mean(np.log(s[:, 0]) - shifted[rows, labels])
    grad = e / s
    grad[rows, labels] -= 1
    grad /= n
    return loss, grad


def lstm_forward(x, W, b):
    """LSTM with gates (f, i, o, n) on [h, x]; h0 = c0 = 0.  Returns (y, cache)."""
    t_len, n, i_size = x.shape
    h_size = W.shape[1]
    wh = W[:, :, :h_size].reshape(4 * h_size, h_size)
    wx = W[:, :, h_size:].reshape(4 * h_size, i_size)
    # the input half of every step's gate pre-activations in one GEMM
    zx = (x.reshape(t_len * n, i_size) @ wx.T).reshape(t_len, n, 4 * h_size)
    zx += b.reshape(-1)
    gates = np.empty_like(zx)
    cs = np.empty((t_len, n, h_size), x.dtype)
    tcs = np.empty_like(cs)
    y = np.empty_like(cs)
    h = np.zeros((n, h_size), x.dtype)
    c = np.zeros((n, h_size), x.dtype)
    H = h_size
    for t in range(t_len):
        z = zx[t] + h @ wh.T
        g = gates[t]
        g[:, : 3 * H] = _sigmoid(z[:, : 3 * H])
        g[:, 3 * H :] = np.tanh(z[:, 3 * H :])
        f, i, o, nn = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H :]
        c = f * c + i * nn
        tc = np.tanh(c)
        h = o * tc
        cs[t], tcs[t], y[t] = c, tc, h
    return y, (x, wh, wx, gates, cs, tcs, y)


def lstm_backward(dy, cache):
    """BPTT: dZ per step (serial in t), then dW, db, dx as three GEMMs over all steps."""
    x, wh, wx, gates, cs, tcs, y = cache
    t_len, n, i_size = x.shape
    H = wh.shape[1]
    dz = np.empty_like(gates)
    dh_next = np.zeros((n, H), x.dtype)
    dc_next = np.zeros((n, H), x.dtype)
    zeros = np.zeros((n, H), x.dtype)
    for t in range(t_len - 1, -1, -1):
        g = gates[t]
        f, i, o, nn = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H :]
        tc = tcs[t]
        c_prev = cs[t - 1] if t > 0 else zeros
        dh = dy[t] + dh_next
        dc = dh * o * (1 - tc * tc) + dc_next
        d = dz[t]
        d[:, :H] = dc * c_prev * f * (1 - f)
        d[:, H : 2 * H] = dc * nn * i * (1 - i)
        d[:, 2 * H : 3 * H] = dh * tc * o * (1 - o)
        d[:, 3 * H :] = dc * i * (1 - nn * nn)
        dc_next = dc * f
        dh_next = d @ wh
    dz2 = dz.reshape(t_len * n, 4 * H)
    h_prev = np.concatenate([np.zeros((1, n, H), x.dtype), y[:-1]]).reshape(t_len * n, H)
    dW = np.concatenate([(dz2.T @ h_prev).reshape(4, H, H), (dz2.T @ x.reshape(t_len * n, i_size)).reshape(4, H, i_size)], axis=2)
    db = dz2.sum(axis=0).reshape(4, H)
    dx = (dz2 @ wx).reshape(t_len, n, i_size)
    return dx, dW, db


def softmax(x):
    e = x - x.max(axis=-1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def softmax_backward(dy, y):
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------
# benches
# --------------------------------------------------------------------------


class _Dense:
    def __init__(self, inp):
        self.x, self.W, self.b, self.dy = inp["x"], inp["W"], inp["b"], inp["dy"]

    def forward(self):
        y = self.x @ self.W.T
        y += self.b
        return [y]

    def fwdbwd(self):
        self.forward()
        return [self.dy @ self.W, self.dy.T @ self.x, self.dy.sum(axis=0)]


class _Conv:
    def __init__(self, inp):
        self.x, self.K, self.B, self.dy = inp["x"], inp["K"], inp["B"], inp["dy"]

    def forward(self):
        return [conv_forward(self.x, self.K, self.B)[0]]

    def fwdbwd(self):
        _, _, cache = conv_forward(self.x, self.K, self.B)
        return list(conv_backward(self.dy, cache))


class _LSTM:
    def __init__(self, inp):
        self.x, self.W, self.b, self.dy = inp["x"], inp["W"], inp["b"], inp["dy"]

    def forward(self):
        return [lstm_forward(self.x, self.W, self.b)[0]]

    def fwdbwd(self):
        _, cache = lstm_forward(self.x, self.W, self.b)
        return list(lstm_backward(self.dy, cache))


class _Softmax:
    def __init__(self, inp):
        self.x, self.dy = inp["x"], inp["dy"]

    def forward(self):
        return [softmax(self.x)]

    def fwdbwd(self):
        return [softmax_backward(self.dy, softmax(self.x))]


class _TrainMLP:
    def __init__(self, inp):
        self.x, self.labels = inp["x"], inp["labels"]
        self.params = [p.copy() for p in inp["params"]]

    def _forward(self):
        h, saved = self.x, []
        for li, (_, _, act) in enumerate(MLP_LAYERS):
            W, b = self.params[2 * li], self.params[2 * li + 1]
            z = h @ W.T
            z += b
            saved.append((h, z))
            h = np.maximum(z, 0) if act == "relu" else z
        return h, saved

    def forward(self):
        return [self._forward()[0]]

    def fwdbwd(self):
        logits, saved = self._forward()
        loss, dh = cross_entropy(logits, self.labels)
        grads = [None] * len(self.params)
        for li in range(len(MLP_LAYERS) - 1, -1, -1):
            h_in, z = saved[li]
            dz = dh * (z > 0) if MLP_LAYERS[li][2] == "relu" else dh
            grads[2 * li] = dz.T @ h_in
            grads[2 * li + 1] = dz.sum(axis=0)
            if li > 0:  # the input needs no gradient (autograd skips it too)
                dh = dz @ self.params[2 * li]
        for p, g in zip(self.params, grads):
            p -= TRAIN_LR * g
        return [loss, *self.params]


class _TrainCNN:
    def __init__(self, inp):
        self.x, self.labels = inp["x"], inp["labels"]
        self.params = [p.copy() for p in inp["params"]]

    def _forward(self):
        h, saved = self.x, []
        for bi, (_, _, _, pad) in enumerate(CNN_BLOCKS):
            y, z, conv_cache = conv_forward(h, self.params[2 * bi], self.params[2 * bi + 1], pad=pad, relu=True)
            h, pool_cache = maxpool2_forward(y)
            saved.append((z, conv_cache, pool_cache))
        flat = h.reshape(h.shape[0], -1)
        W, b = self.params[-2], self.params[-1]
        logits = flat @ W.T
        logits += b
        return logits, (saved, flat, h.shape)

    def forward(self):
        return [self._forward()[0]]

    def fwdbwd(self):
        logits, (saved, flat, pooled_shape) = self._forward()
        loss, dlogits = cross_entropy(logits, self.labels)
        W = self.params[-2]
        grads = [None] * len(self.params)
        grads[-2], grads[-1] = dlogits.T @ flat, dlogits.sum(axis=0)
        dh = (dlogits @ W).reshape(pooled_shape)
        for bi in range(len(CNN_BLOCKS) - 1, -1, -1):
            z, conv_cache, pool_cache = saved[bi]
            dz = maxpool2_backward(dh, pool_cache) * (z > 0)
            dh, grads[2 * bi], grads[2 * bi + 1] = conv_backward(dz, conv_cache)
        for p, g in zip(self.params, grads):
            p -= TRAIN_LR * g
        return [loss, *self.params]


_BENCHES = {"dense": _Dense, "conv2d": _Conv, "lstm": _LSTM, "softmax": _Softmax, "train_mlp": _TrainMLP, "train_cnn": _TrainCNN}


def build(case, dtype, inputs):
    return _BENCHES[case.op](inputs)
