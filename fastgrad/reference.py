"""The cheat sheet in vectorised NumPy, written independently of the kernels: the tests' oracle and the benchmarks' NumPy peer.

A different algorithm from every kernel: matrix products through ``@`` /
``einsum`` (BLAS), convolution as a contraction of an ``as_strided`` window
view of the zero-padded input, explicit Jacobian matrices for softmax, the
LSTM the textbook way ([h_{t-1}, x_t] concatenated, one product per step), and
activation derivatives by complex-step differentiation rather than from
hand-written formulas.  Nothing here imports fastgrad's kernels, so a mistake
shared with them is unlikely; a learner can read the same equations a second
way.  Results keep the inputs' dtype (the NumPy peer times float32 as float32),
except activation derivatives taken by the complex step, which are float64.

dense, dense_grads; softmax, softmax_jacobian, softmax_vjp (through the
explicit Jacobian), softmax_backward (the O(n) form), log_softmax,
cross_entropy; conv_ref, conv_grad_ref, pool_ref; lstm_forward, lstm_backward;
embedding, embedding_grad (an unbuffered ``np.add.at`` scatter); layer_norm,
layer_norm_grads, batch_norm, batch_norm_grads (through the explicit Jacobian
of xhat with respect to each normalised group, never the folded formula).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

_SQRT_2_PI = np.sqrt(2.0 / np.pi)


def activation(name: str, z):
    """sigma(z), vectorised textbook formulas (also valid for complex z near the real axis)."""
    if name == "identity":
        return z
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.where(np.real(z) > 0, z, 0 * z)
    if name == "leaky_relu":
        return np.where(np.real(z) > 0, z, 0.01 * z)
    if name == "elu":
        return np.where(np.real(z) > 0, z, np.exp(z) - 1.0)
    if name == "softplus":
        return np.log(1.0 + np.exp(z))
    if name == "silu":
        return z / (1.0 + np.exp(-z))
    if name == "gelu":
        return 0.5 * z * (1.0 + np.tanh(_SQRT_2_PI * (z + 0.044715 * z**3)))
    if name == "hard_sigmoid":
        r = np.real(z)
        return np.where(r <= -3, 0 * z, np.where(r >= 3, 0 * z + 1, z / 6 + 0.5))
    if name == "hard_tanh":
        r = np.real(z)
        return np.where(r <= -1, 0 * z - 1, np.where(r >= 1, 0 * z + 1, z))
    if name == "gelu_erf":
        from scipy.special import erf  # complex-capable, for the complex step; only this activation needs scipy

        return 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))
    raise ValueError(name)


def activation_grad(name: str, z, y=None):
    """sigma'(z) by the complex step, Im(sigma(z + ih)) / h, exact to rounding.

    With the activation's output ``y`` given, sigmoid and tanh use y (1 - y) and
    1 - y^2 instead (exact, and the complex step would make the NumPy
    benchmark peer several times slower on an LSTM).
    """
    if name == "identity":
        return np.ones_like(z)
    if y is not None and name == "sigmoid":
        return y * (1.0 - y)
    if y is not None and name == "tanh":
        return 1.0 - y * y
    h = 1e-30
    return np.imag(activation(name, np.asarray(z).astype(np.complex128) + 1j * h)) / h


def dense(x, W, b, name):
    z = x @ W.T + (0 if b is None else b)
    return activation(name, z), z


def dense_grads(dy, x, W, z, name):
    dz = dy * activation_grad(name, z)
    return dz @ W, dz.T @ x, dz.sum(axis=0)


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_jacobian(y_row):
    """J_kj = y_k (delta_kj - y_j) as an explicit n x n matrix."""
    return np.diag(y_row) - np.outer(y_row, y_row)


def softmax_vjp(dy, y):
    """dx = J^T dy row by row through the explicit Jacobian (rows on the last axis)."""
    out = np.empty_like(dy)
    for idx in np.ndindex(dy.shape[:-1]):
        out[idx] = softmax_jacobian(y[idx]).T @ dy[idx]
    return out


def softmax_backward(dy, y):
    """dx = y (dy - sum_k dy_k y_k) along the last axis: the O(n) form (the benchmark peer's)."""
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def cross_entropy(logits, target):
    """Mean cross-entropy and its gradient; target int labels or probabilities."""
    logp = log_softmax(logits)
    N, C = logits.shape
    if np.asarray(target).dtype.kind in "iu":
        p = np.eye(C, dtype=logits.dtype)[target]
    else:
        p = np.asarray(target, dtype=logits.dtype)
    loss = -np.sum(p * logp) / N
    grad = (np.exp(logp) * p.sum(axis=1, keepdims=True) - p) / N
    return loss, grad


# --------------------------------------------------------------------------
# convolution and pooling
# --------------------------------------------------------------------------


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


def conv_ref(x, K, B, stride, pads, dilation, groups, act="identity"):
    """Returns (y, z) for x (N, C, *s), K (M, C/g, *k), B None | (M,) | (M, *out)."""
    nd = x.ndim - 2
    x4 = _to4(np.asarray(x), nd)
    K4 = _to4(np.asarray(K), nd)
    stride, pads, dilation = _norm(nd, stride, pads, dilation)
    N, _C, _H, _W = x4.shape
    M, Cg, kh, kw = K4.shape
    G = groups
    xp = np.pad(x4, ((0, 0), (0, 0), pads[0], pads[1]))
    Ho = (xp.shape[2] - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    Wo = (xp.shape[3] - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    win = _windows(xp, (kh, kw), stride, dilation, (Ho, Wo)).reshape(N, G, Cg, Ho, Wo, kh, kw)
    z = np.einsum("ngchwij,gmcij->ngmhw", win, K4.reshape(G, M // G, Cg, kh, kw), optimize=True).reshape(N, M, Ho, Wo)
    if B is not None:
        B = np.asarray(B)
        z = z + (B[:, None, None] if B.ndim == 1 else B.reshape(M, Ho, Wo))
    if nd == 1:
        z = z[:, :, 0, :]
    return activation(act, z), z


def conv_grad_ref(dz, x, K, B, stride, pads, dilation, groups):
    """(dx, dK, dB) from dL/dz (the activation's derivative already applied)."""
    nd = x.ndim - 2
    x4 = _to4(np.asarray(x), nd)
    K4 = _to4(np.asarray(K), nd)
    dz4 = _to4(np.asarray(dz), nd)
    stride, pads, dilation = _norm(nd, stride, pads, dilation)
    N, C, H, W = x4.shape
    M, Cg, kh, kw = K4.shape
    G = groups
    Ho, Wo = dz4.shape[2:]
    xp = np.pad(x4, ((0, 0), (0, 0), pads[0], pads[1]))
    win = _windows(xp, (kh, kw), stride, dilation, (Ho, Wo)).reshape(N, G, Cg, Ho, Wo, kh, kw)
    dzg = dz4.reshape(N, G, M // G, Ho, Wo)
    dK = np.einsum("ngchwij,ngmhw->gmcij", win, dzg, optimize=True).reshape(K4.shape)
    Kg = K4.reshape(G, M // G, Cg, kh, kw)
    dxp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            rows = slice(r0, r0 + stride[0] * (Ho - 1) + 1, stride[0])
            cols = slice(c0, c0 + stride[1] * (Wo - 1) + 1, stride[1])
            contrib = np.einsum("ngmhw,gmc->ngchw", dzg, Kg[:, :, :, i, j], optimize=True).reshape(N, C, Ho, Wo)
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
    x4 = _to4(np.asarray(x), nd)
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
        dy4 = _to4(np.asarray(dy), nd)
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


# --------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------

DEFAULTS = {"f": "sigmoid", "i": "sigmoid", "o": "sigmoid", "n": "tanh", "h": "tanh"}


def _acts(activations):
    full = dict(DEFAULTS)
    full.update(activations or {})
    return full


def lstm_forward(x, W, b, h0=None, c0=None, activations=None, lengths=None):
    """Returns y (T, N, H), (hT, cT), and a dict of saved tensors."""
    acts = _acts(activations)
    T, N, n_in = x.shape
    H = W.shape[1]
    W2 = W.reshape(4 * H, H + n_in)
    b2 = b.reshape(4 * H)
    h = np.zeros((N, H), x.dtype) if h0 is None else np.array(h0, dtype=x.dtype)
    c = np.zeros((N, H), x.dtype) if c0 is None else np.array(c0, dtype=x.dtype)
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
    ys, saved = [], []
    for t in range(T):
        live = (t < lengths)[:, None]
        hx = np.concatenate([h, x[t]], axis=1)
        z = (hx @ W2.T + b2).reshape(N, 4, H)
        f, i, o, n = (activation(acts[g], z[:, k]) for k, g in enumerate("fion"))
        c_new = f * c + i * n
        h_new = o * activation(acts["h"], c_new)
        saved.append({"hx": hx, "z": z, "f": f, "i": i, "o": o, "n": n, "c_prev": c, "c": c_new, "live": live})
        ys.append(np.where(live, h_new, 0.0))
        h = np.where(live, h_new, h)
        c = np.where(live, c_new, c)
    return np.stack(ys), (h, c), {"steps": saved, "W": W, "acts": acts}


def lstm_backward(dy, saved, dhT=None, dcT=None, h_gates="fion"):
    """BPTT; returns (dx, dW, db, dh0, dc0).

    ``h_gates`` lists the gates whose term enters dL/dh_{t-1}: "fion" is the
    correct rule, anything shorter is the dropped-terms mutant the tests use.
    """
    steps, W, acts = saved["steps"], saved["W"], saved["acts"]
    T = len(steps)
    N, H = steps[0]["c"].shape
    n_in = W.shape[2] - H
    W2 = W.reshape(4 * H, H + n_in)
    keep = np.array([g in h_gates for g in "fion"], dtype=float).repeat(H)
    dt = W.dtype
    dh = np.zeros((N, H), dt) if dhT is None else np.array(dhT, dtype=dt)
    dc = np.zeros((N, H), dt) if dcT is None else np.array(dcT, dtype=dt)
    dx = np.zeros((T, N, n_in), dt)
    dW2 = np.zeros_like(W2)
    db2 = np.zeros(4 * H, dt)
    for t in range(T - 1, -1, -1):
        s = steps[t]
        live = s["live"]
        g_up = dh + (0.0 if dy is None else dy[t])
        sh = activation(acts["h"], s["c"])
        dc_t = g_up * activation_grad(acts["h"], s["c"], sh) * s["o"] + dc
        dgate = {"f": dc_t * s["c_prev"], "i": dc_t * s["n"], "o": g_up * sh, "n": dc_t * s["i"]}
        dz = np.concatenate([dgate[g] * activation_grad(acts[g], s["z"][:, k], s[g]) for k, g in enumerate("fion")], axis=1)
        dz = np.where(live, dz, 0.0)
        dW2 += dz.T @ s["hx"]
        db2 += dz.sum(axis=0)
        dhx = dz @ W2
        dx[t] = dhx[:, H:]
        dh_prev = (dz * keep) @ W2[:, :H]
        dh = np.where(live, dh_prev, dh)
        dc = np.where(live, dc_t * s["f"], dc)
    return dx, dW2.reshape(W.shape), db2.reshape(4, H), dh, dc


# --------------------------------------------------------------------------
# embedding, layer norm, batch norm
# --------------------------------------------------------------------------


def embedding(idx, W, padding_idx=None):
    return W[idx]


def embedding_grad(dy, idx, W, padding_idx=None):
    dW = np.zeros_like(W)
    np.add.at(dW, idx.reshape(-1), dy.reshape(-1, W.shape[1]))
    if padding_idx is not None:
        dW[padding_idx] = 0
    return dW


def _normalise_groups(g, eps):
    """g (G, M): xhat and r per group (biased variance)."""
    mu = g.mean(axis=1, keepdims=True)
    var = ((g - mu) ** 2).mean(axis=1, keepdims=True)
    r = 1.0 / np.sqrt(var + eps)
    return (g - mu) * r, r


def _group_input_grad(dxhat, xhat, r):
    """dL/dx per group from dL/dxhat through the explicit Jacobian (G, M, M)."""
    G, M = xhat.shape
    eye = np.eye(M)[None]
    J = r[:, :, None] * (eye - 1.0 / M - xhat[:, :, None] * xhat[:, None, :] / M)  # J[g, j, k] = d xhat_j / d x_k
    return np.einsum("gj,gjk->gk", dxhat, J)


def layer_norm(x, normalized_shape, gamma=None, beta=None, eps=1e-5):
    D = int(np.prod(normalized_shape))
    xhat, _ = _normalise_groups(x.reshape(-1, D), eps)
    xhat = xhat.reshape(x.shape)
    if gamma is None:
        return xhat
    return xhat * gamma + beta


def layer_norm_grads(dy, x, normalized_shape, gamma=None, eps=1e-5):
    D = int(np.prod(normalized_shape))
    xhat, r = _normalise_groups(x.reshape(-1, D), eps)
    g = dy.reshape(-1, D) * (1.0 if gamma is None else gamma.reshape(-1))
    dx = _group_input_grad(g, xhat, r).reshape(x.shape)
    if gamma is None:
        return dx, None, None
    lead = tuple(range(x.ndim - len(normalized_shape)))
    return dx, np.sum(dy * xhat.reshape(x.shape), axis=lead), np.sum(dy, axis=lead)


def _channels(x):
    """x (N, C, *spatial) -> (C, N * S) groups, and the inverse."""
    N, C = x.shape[:2]
    g = np.moveaxis(x.reshape(N, C, -1), 1, 0).reshape(C, -1)

    def back(a):
        return np.moveaxis(a.reshape(C, N, -1), 0, 1).reshape(x.shape)

    return g, back


def _per_channel(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def batch_norm(x, gamma=None, beta=None, running_mean=None, running_var=None, training=True, eps=1e-5):
    """y and the batch statistics (mean, biased var) in training; y from the running ones otherwise."""
    g, back = _channels(x)
    if training:
        mean, var = g.mean(axis=1), g.var(axis=1)
    else:
        mean, var = running_mean, running_var
    xhat = (x - _per_channel(mean, x)) / np.sqrt(_per_channel(var, x) + eps)
    y = xhat if gamma is None else xhat * _per_channel(gamma, x) + _per_channel(beta, x)
    return y, mean, var


def batch_norm_grads(dy, x, gamma=None, running_mean=None, running_var=None, training=True, eps=1e-5):
    g, back = _channels(x)
    dyg, _ = _channels(dy)
    scale = 1.0 if gamma is None else gamma[:, None]
    if training:
        xhat, r = _normalise_groups(g, eps)
        dx = back(_group_input_grad(dyg * scale, xhat, r))
    else:
        r = 1.0 / np.sqrt(running_var + eps)[:, None]
        xhat = (g - running_mean[:, None]) * r
        dx = back(dyg * scale * r)
    if gamma is None:
        return dx, None, None
    return dx, np.sum(dyg * xhat, axis=1), np.sum(dyg, axis=1)
