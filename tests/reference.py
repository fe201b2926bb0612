"""Independent NumPy oracle for the dense and softmax kernels.

Vectorised formulas (matmul, explicit Jacobian matrices) instead of the
kernels' index loops, and each activation's derivative taken by complex-step
differentiation rather than from a hand-written formula, so a mistake shared
with the kernels is unlikely.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf  # complex-capable, for the complex step (scipy comes with scikit-learn)

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
        return 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))
    raise ValueError(name)


def activation_grad(name: str, z):
    """sigma'(z) by the complex step: Im(sigma(z + ih)) / h, exact to rounding."""
    h = 1e-30
    return np.imag(activation(name, z.astype(np.complex128) + 1j * h)) / h


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


def log_softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def cross_entropy(logits, target):
    """Mean cross-entropy and its gradient; target int labels or probabilities."""
    logp = log_softmax(logits)
    N, C = logits.shape
    if np.asarray(target).dtype.kind in "iu":
        p = np.eye(C)[target]
    else:
        p = np.asarray(target, dtype=np.float64)
    loss = -np.sum(p * logp) / N
    grad = (np.exp(logp) * p.sum(axis=1, keepdims=True) - p) / N
    return loss, grad
