"""Independent NumPy oracle for embedding, layer norm and batch norm.

Vectorised formulas instead of the kernels' loops: the embedding gradient by
``np.add.at`` (an unbuffered scatter), the normalisation gradients through the
explicit Jacobian of xhat with respect to each group (``d xhat_j / d x_k =
r (delta_jk - 1/M - xhat_j xhat_k / M)``), never the kernels' folded formula.
"""

from __future__ import annotations

import numpy as np


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
