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

import numpy as np
from numba import prange

from .._jit import F1, F2, I1, Real, helper, kernel
from .vmath import exp, order_key


# --------------------------------------------------------------------------
# row reductions
# --------------------------------------------------------------------------
# Without fast-math LLVM keeps a sum sequential, one element per add latency.
# The max runs on integer order keys (integer max needs no flag); the sums are
# compiled with the reassoc flag alone, so the loop vectoriser splits them into
# vector partial sums (no approximate functions, NaN/Inf semantics unchanged).
# Eight explicit scalar partial sums stayed scalar (numba turns SLP off).
# Measured 2 threads, forward+backward: (256, 1000) f32 0.279 -> 0.240 ms,
# (32, 50000) f64 5.59 -> 4.93 ms.  The split is fixed by the compiled code:
# results do not depend on the thread count.


@helper(fastmath=False)
def _row_max(x, r):
    """max_j x[r, j], as the max of the integer order keys (NaN may or may not win; it reaches the sum of exps)."""
    m = order_key(x[r, 0])
    for j in range(1, x.shape[1]):
        k = order_key(x[r, j])
        if k > m:
            m = k
    return order_key(m)


@helper(fastmath=False, reassoc=True)
def _row_dot(a, b, r):
    """sum_j a[r, j] * b[r, j], vectorised: reassociation only (see _jit.helper)."""
    s = a.dtype.type(0)
    for j in range(a.shape[1]):
        s += a[r, j] * b[r, j]
    return s


@helper(fastmath=False, reassoc=True)
def _row_sum(a, r):
    """sum_j a[r, j], vectorised: reassociation only (see _jit.helper)."""
    s = a.dtype.type(0)
    for j in range(a.shape[1]):
        s += a[r, j]
    return s


@helper(fastmath=False)
def _exp_row_sum(e, x, r, c):
    """e[r, k] = e^{x[r, k] + c} for all k; returns sum_k e[r, k].

    The exp loop has no reduction in it, so it vectorises with exp; the sum is a second pass
    (fusing them in L1-sized blocks measured 10-20% slower).
    """
    for k in range(x.shape[1]):
        e[r, k] = exp(x[r, k] + c)
    return _row_sum(e, r)


@helper(fastmath=False, reassoc=True)
def _exp_sum(x, r, c):
    """sum_k e^{x[r, k] + c} without storing the exps (log-softmax needs only their sum).

    The fused exp-and-add loop vectorises: the sum carries the reassoc flag alone.
    """
    s = x.dtype.type(0)
    for k in range(x.shape[1]):
        s += exp(x[r, k] + c)
    return s


@kernel(fastmath=False)
def softmax_forward(y: F2, x: F2):
    """y[r, k] = e^{x[r, k] + c} / sum_j e^{x[r, j] + c} with c = -max_j x[r, j].

    Shapes: y, x (R, n).  With c the largest exponent is e^0 = 1, so nothing
    overflows and the denominator is >= 1.
    """
    R, n = x.shape
    for i in prange(R):
        r = np.int64(i)  # as in the serial twin (a prange index is uint64): one compiled copy of each row helper
        c = -_row_max(x, r)
        s = _exp_row_sum(y, x, r, c)  # y[r, k] = e^{x[r, k] + c}; s = sum_j y[r, j]
        inv = y.dtype.type(1) / s  # one division per row, a multiply per element
        for k in range(n):
            y[r, k] = y[r, k] * inv


@kernel(fastmath=False)
def softmax_backward(dx: F2, dy: F2, y: F2):
    """dx[r, j] = y[r, j] * (dy[r, j] - sum_k dy[r, k] * y[r, k]).

    The cheat sheet's dL/dx_j = sum_k dL/dy_k y_k (delta_kj - y_j) with the
    delta term taken out of the sum: O(n) per row.  Shapes: dx, dy, y (R, n).
    """
    R, n = y.shape
    for i in prange(R):
        r = np.int64(i)  # signed, as in the serial twin
        dot = _row_dot(dy, y, r)  # sum_k dy[r, k] * y[r, k]
        for j in range(n):
            dx[r, j] = y[r, j] * (dy[r, j] - dot)


@kernel(fastmath=False)
def log_softmax_forward(out: F2, x: F2):
    """out[r, k] = x[r, k] - log sum_j e^{x[r, j]}  (stable log-sum-exp).  Shapes (R, n)."""
    R, n = x.shape
    for i in prange(R):
        r = np.int64(i)  # signed, as in the serial twin
        m = _row_max(x, r)
        lse = m + math.log(_exp_sum(x, r, -m))  # the exps are summed, never stored
        for k in range(n):
            out[r, k] = x[r, k] - lse


@kernel(fastmath=False)
def log_softmax_backward(dx: F2, dy: F2, out: F2):
    """dx[r, j] = dy[r, j] - softmax_j * sum_k dy[r, k], with softmax_j = e^{out[r, j]}.

    d(x_k - lse)/dx_j = delta_kj - y_j.  Shapes: dx, dy, out (R, n).
    """
    R, n = out.shape
    for i in prange(R):
        r = np.int64(i)  # signed, as in the serial twin
        total = _row_sum(dy, r)  # sum_k dy[r, k]
        for j in range(n):
            dx[r, j] = dy[r, j] - exp(out[r, j]) * total


@kernel(fastmath=False)
def cross_entropy_labels(losses: F1, dlogits: F2, x: F2, labels: I1, scale: Real):
    """Cross-entropy of logits x against integer labels, fused with log-softmax.

    loss_r = -log y[r, t_r] = lse_r - x[r, t_r]
    dL/dx[r, j] = scale * (y[r, j] - delta_{j, t_r})      (scale = 1/N for the mean)

    Shapes: losses (R,), dlogits, x (R, n), labels (R,) int64 in [0, n).
    """
    R, n = x.shape
    for i in prange(R):
        r = np.int64(i)  # signed, as in the serial twin
        m = _row_max(x, r)
        s = _exp_row_sum(dlogits, x, r, -m)  # dlogits[r, j] = e^{x[r, j] - m}: one exp per element
        lse = m + math.log(s)
        t = labels[r]
        losses[r] = lse - x[r, t]
        factor = scale / s  # y[r, j] = e^{x[r, j] - m} / s, times the reduction's scale
        for j in range(n):
            dlogits[r, j] = dlogits[r, j] * factor
        dlogits[r, t] -= scale


@kernel(fastmath=False)
def cross_entropy_probs(losses: F1, dlogits: F2, x: F2, p: F2, scale: Real):
    """Cross-entropy of logits x against target probabilities p, fused with log-softmax.

    loss_r = -sum_k p[r, k] log y[r, k] = sum_k p[r, k] (lse_r - x[r, k])
    dL/dx[r, j] = scale * (y[r, j] sum_k p[r, k] - p[r, j])

    (sum_k p[r, k] is 1 for a distribution; kept so unnormalised targets get
    the exact gradient of the loss above.)  Shapes: losses (R,), dlogits, x, p (R, n).
    """
    R, n = x.shape
    for i in prange(R):
        r = np.int64(i)  # signed, as in the serial twin
        m = _row_max(x, r)
        s = _exp_row_sum(dlogits, x, r, -m)  # dlogits[r, j] = e^{x[r, j] - m}: one exp per element
        lse = m + math.log(s)
        loss = x.dtype.type(0)
        for k in range(n):
            if p[r, k] != 0:  # 0 * log y is 0 even where y underflows
                loss += p[r, k] * (lse - x[r, k])
        total = _row_sum(p, r)  # sum_k p[r, k]
        losses[r] = loss
        factor = total / s
        for j in range(n):
            dlogits[r, j] = scale * (dlogits[r, j] * factor - p[r, j])
