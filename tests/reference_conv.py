"""Independent NumPy oracle for convolution and pooling (float64).

A different algorithm from the kernels: the forward builds a zero-padded copy
of the input and a window view with ``np.lib.stride_tricks.as_strided``, then
contracts it with ``einsum``; the input gradients loop over the kernel taps
(kh * kw iterations) and add strided slices of the padded gradient.  Padding
is given as ((ph0, ph1), (pw0, pw1)); 1-D arrays are handled as H = 1.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

_SQ = np.sqrt(2.0 / np.pi)


def _sig(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


ACT = {
    "identity": lambda z: z,
    "sigmoid": _sig,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0.0))),
    "softplus": lambda z: np.logaddexp(z, 0.0),
    "silu": lambda z: z * _sig(z),
    "gelu": lambda z: 0.5 * z * (1.0 + np.tanh(_SQ * (z + 0.044715 * z**3))),
    "hard_sigmoid": lambda z: np.clip(z / 6.0 + 0.5, 0.0, 1.0),
    "hard_tanh": lambda z: np.clip(z, -1.0, 1.0),
}


def _to4(a, nd):
    return a if nd == 2 else a[:, :, None, :]


def _windows(xp, kernel, stride, dilation, out):
    N, C = xp.shape[:2]
    sN, sC, sH, sW = xp.strides
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out
    return as_strided(xp, (N, C, Ho, Wo, kh, kw), (sN, sC, sH * sh, sW * sw, sH * dh, sW * dw), writeable=False)


def _norm(nd, stride, pads, dilation):
    if nd == 1:
        return (1, stride[0]), ((0, 0), tuple(pads[0])), (1, dilation[0])
    return tuple(stride), tuple(tuple(p) for p in pads), tuple(dilation)


def conv_ref(x, K, B, stride, pads, dilation, groups, activation="identity"):
    """Returns (y, z) for x (N, C, *s), K (M, C/g, *k), B None | (M,) | (M, *out)."""
    nd = x.ndim - 2
    x4 = _to4(np.asarray(x, np.float64), nd)
    K4 = _to4(np.asarray(K, np.float64), nd)
    stride, pads, dilation = _norm(nd, stride, pads, dilation)
    N, _C, _H, _W = x4.shape
    M, Cg, kh, kw = K4.shape
    G = groups
    xp = np.pad(x4, ((0, 0), (0, 0), pads[0], pads[1]))
    Ho = (xp.shape[2] - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    Wo = (xp.shape[3] - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    win = _windows(xp, (kh, kw), stride, dilation, (Ho, Wo)).reshape(N, G, Cg, Ho, Wo, kh, kw)
    z = np.einsum("ngchwij,gmcij->ngmhw", win, K4.reshape(G, M // G, Cg, kh, kw)).reshape(N, M, Ho, Wo)
    if B is not None:
        B = np.asarray(B, np.float64)
        z = z + (B[:, None, None] if B.ndim == 1 else B.reshape(M, Ho, Wo))
    if nd == 1:
        z = z[:, :, 0, :]
    return ACT[activation](z), z


def conv_grad_ref(dz, x, K, B, stride, pads, dilation, groups):
    """(dx, dK, dB) from dL/dz (the activation's derivative already applied)."""
    nd = x.ndim - 2
    x4 = _to4(np.asarray(x, np.float64), nd)
    K4 = _to4(np.asarray(K, np.float64), nd)
    dz4 = _to4(np.asarray(dz, np.float64), nd)
    stride, pads, dilation = _norm(nd, stride, pads, dilation)
    N, C, H, W = x4.shape
    M, Cg, kh, kw = K4.shape
    G = groups
    Ho, Wo = dz4.shape[2:]
    xp = np.pad(x4, ((0, 0), (0, 0), pads[0], pads[1]))
    win = _windows(xp, (kh, kw), stride, dilation, (Ho, Wo)).reshape(N, G, Cg, Ho, Wo, kh, kw)
    dzg = dz4.reshape(N, G, M // G, Ho, Wo)
    dK = np.einsum("ngchwij,ngmhw->gmcij", win, dzg).reshape(K4.shape)
    Kg = K4.reshape(G, M // G, Cg, kh, kw)
    dxp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            rows = slice(r0, r0 + stride[0] * (Ho - 1) + 1, stride[0])
            cols = slice(c0, c0 + stride[1] * (Wo - 1) + 1, stride[1])
            contrib = np.einsum("ngmhw,gmc->ngchw", dzg, Kg[:, :, :, i, j]).reshape(N, C, Ho, Wo)
            dxp[:, :, rows, cols] += contrib
    dx = dxp[:, :, pads[0][0] : pads[0][0] + H, pads[1][0] : pads[1][0] + W]
    dB = None
    if B is not None:
        dB = dz4.sum(axis=(0, 2, 3)) if np.ndim(B) == 1 else dz4.sum(axis=0).reshape(np.shape(B))
    if nd == 1:
        dx, dK = dx[:, :, 0, :], dK[:, :, 0, :]
    return dx, dK, dB


def _pool_windows(x, kernel, stride, pad, fill):
    nd = x.ndim - 2
    x4 = _to4(np.asarray(x, np.float64), nd)
    if nd == 1:
        kernel, stride, pad = (1, kernel[0]), (1, stride[0]), (0, pad[0])
    xp = np.pad(x4, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])), constant_values=fill)
    Ho = (xp.shape[2] - kernel[0]) // stride[0] + 1
    Wo = (xp.shape[3] - kernel[1]) // stride[1] + 1
    return xp, _windows(xp, kernel, stride, (1, 1), (Ho, Wo)), kernel, stride, pad


def pool_ref(x, kernel, stride, pad, kind):
    """Forward and a function dy -> dx for max/avg pooling."""
    nd = x.ndim - 2
    xp, win, kernel, stride, pad = _pool_windows(x, kernel, stride, pad, -np.inf if kind == "max" else 0.0)
    N, C, Ho, Wo, kh, kw = win.shape
    flat = win.reshape(N, C, Ho, Wo, kh * kw)
    if kind == "max":
        y = flat.max(axis=-1)
        first = flat.argmax(axis=-1)  # the first maximum, as the kernel
    else:
        y = flat.mean(axis=-1)

    def backward(dy):
        dy4 = _to4(np.asarray(dy, np.float64), nd)
        dxp = np.zeros_like(xp)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i, i + stride[0] * (Ho - 1) + 1, stride[0])
                cols = slice(j, j + stride[1] * (Wo - 1) + 1, stride[1])
                w = (first == i * kw + j) if kind == "max" else 1.0 / (kh * kw)
                dxp[:, :, rows, cols] += dy4 * w
        dx = dxp[:, :, pad[0] : dxp.shape[2] - pad[0], pad[1] : dxp.shape[3] - pad[1]]
        return dx[:, :, 0, :] if nd == 1 else dx

    return (y[:, :, 0, :] if nd == 1 else y), backward
