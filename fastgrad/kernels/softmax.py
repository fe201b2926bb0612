"""Softmax, its Jacobian-vector product, log-softmax and fused cross-entropy.

All kernels work on rows of a C-contiguous 2-D array (R, n): the functional
layer moves the softmax axis last.  They are compiled without fast-math: the
order of the max-subtraction and the sums is what keeps them finite.

Cheat sheet::

    y_k = e^{x_k} / sum_j e^{x_j} = e^{x_k + c} / sum_j e^{x_j + c},   c = -max_j x_j
    dy_k/dx_j = y_k (delta_kj - y_j)
    dL/dx_j = sum_k dL/dy_k * y_k (delta_kj - y_j) = y_j (g_j - sum_k g_k y_k)

The Jacobian J_kj = y_k (delta_kj - y_j) is symmetric (J_kj = J_jk), so the
same O(n) formula is both the vector-Jacobian product (backward) and the
Jacobian-vector product; the n x n matrix is never formed.
"""

import math

from numba import prange

from .._jit import helper, kernel


@helper(fastmath=False)
def _row_max(x, r):
    m = x[r, 0]
    for j in range(1, x.shape[1]):
        if x[r, j] > m:
            m = x[r, j]
    return m


@helper(fastmath=False)
def _row_logsumexp(x, r):
    """log sum_j e^{x[r, j]} computed as max + log sum_j e^{x[r, j] - max}."""
    m = _row_max(x, r)
    s = x.dtype.type(0)
    for j in range(x.shape[1]):
        s += math.exp(x[r, j] - m)
    return m + math.log(s)


@kernel(fastmath=False)
def softmax_forward(y, x):
    """y[r, k] = e^{x[r, k] + c} / sum_j e^{x[r, j] + c} with c = -max_j x[r, j].

    Shapes: y, x (R, n).  With c the largest exponent is e^0 = 1, so nothing
    overflows and the denominator is >= 1.
    """
    R, n = x.shape
    for r in prange(R):
        c = -_row_max(x, r)
        s = y.dtype.type(0)
        for k in range(n):
            e = math.exp(x[r, k] + c)
            y[r, k] = e
            s += e
        for k in range(n):
            y[r, k] = y[r, k] / s


@kernel(fastmath=False)
def softmax_backward(dx, dy, y):
    """dx[r, j] = y[r, j] * (dy[r, j] - sum_k dy[r, k] * y[r, k]).

    The cheat sheet's dL/dx_j = sum_k dL/dy_k y_k (delta_kj - y_j) with the
    delta term taken out of the sum: O(n) per row.  Shapes: dx, dy, y (R, n).
    """
    R, n = y.shape
    for r in prange(R):
        dot = y.dtype.type(0)
        for k in range(n):
            dot += dy[r, k] * y[r, k]
        for j in range(n):
            dx[r, j] = y[r, j] * (dy[r, j] - dot)


@kernel(fastmath=False)
def log_softmax_forward(out, x):
    """out[r, k] = x[r, k] - log sum_j e^{x[r, j]}  (stable log-sum-exp).  Shapes (R, n)."""
    R, n = x.shape
    for r in prange(R):
        lse = _row_logsumexp(x, r)
        for k in range(n):
            out[r, k] = x[r, k] - lse


@kernel(fastmath=False)
def log_softmax_backward(dx, dy, out):
    """dx[r, j] = dy[r, j] - softmax_j * sum_k dy[r, k], with softmax_j = e^{out[r, j]}.

    d(x_k - lse)/dx_j = delta_kj - y_j.  Shapes: dx, dy, out (R, n).
    """
    R, n = out.shape
    for r in prange(R):
        total = dy.dtype.type(0)
        for k in range(n):
            total += dy[r, k]
        for j in range(n):
            dx[r, j] = dy[r, j] - math.exp(out[r, j]) * total


@kernel(fastmath=False)
def cross_entropy_labels(losses, dlogits, x, labels, scale):
    """Cross-entropy of logits x against integer labels, fused with log-softmax.

    loss_r = -log y[r, t_r] = lse_r - x[r, t_r]
    dL/dx[r, j] = scale * (y[r, j] - delta_{j, t_r})      (scale = 1/N for the mean)

    Shapes: losses (R,), dlogits, x (R, n), labels (R,) int64 in [0, n).
    """
    R, n = x.shape
    for r in prange(R):
        lse = _row_logsumexp(x, r)
        t = labels[r]
        losses[r] = lse - x[r, t]
        for j in range(n):
            dlogits[r, j] = scale * math.exp(x[r, j] - lse)
        dlogits[r, t] -= scale


@kernel(fastmath=False)
def cross_entropy_probs(losses, dlogits, x, p, scale):
    """Cross-entropy of logits x against target probabilities p, fused with log-softmax.

    loss_r = -sum_k p[r, k] log y[r, k] = sum_k p[r, k] (lse_r - x[r, k])
    dL/dx[r, j] = scale * (y[r, j] sum_k p[r, k] - p[r, j])

    (sum_k p[r, k] is 1 for a distribution; kept so unnormalised targets get
    the exact gradient of the loss above.)  Shapes: losses (R,), dlogits, x, p (R, n).
    """
    R, n = x.shape
    for r in prange(R):
        lse = _row_logsumexp(x, r)
        loss = x.dtype.type(0)
        total = x.dtype.type(0)
        for k in range(n):
            if p[r, k] != 0:  # 0 * log y is 0 even where y underflows
                loss += p[r, k] * (lse - x[r, k])
            total += p[r, k]
        losses[r] = loss
        for j in range(n):
            dlogits[r, j] = scale * (math.exp(x[r, j] - lse) * total - p[r, j])
