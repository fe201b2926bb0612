"""Dense layer: the cheat sheet's first section, over a batch of N samples.

Forward (one sample s of the batch)::

    z_k = b_k + sum_j w_kj * x_j          z (N, m), x (N, n), W (m, n), b (m,)
    y_k = sigma(z_k)                      y (N, m)

Backward (the cheat sheet's four lines)::

    dL/dz_k  = dL/dy_k * sigma'(z_k)
    dL/db_k  = dL/dz_k                    summed over the batch
    dL/dw_kj = dL/dz_k * x_j              summed over the batch
    dL/dx_j  = sum_k dL/dz_k * w_kj

All three products run through the product core (``kernels.products``: packed
panels, an MR x NR register tile of explicit vectors, cache blocks from the
CPU's cache sizes), reading W^T and dz^T through strides instead of transposed
copies.  :func:`dense_reference` beside the forward is the plain index-form
loop it computes (and ``products.matmul_reference`` the core's).

Race freedom: the core's tasks own blocks of z, dx and dW; db[k] is summed by
the dW task that owns row k and the first column block.  Every element is
computed by one task in a fixed order, so results are bitwise identical at any
thread count.
"""

from typing import NamedTuple

import numpy as np
from numba import prange

from .._jit import CORE_SERIAL_BELOW, F1, F2, helper, kernel
from .activations import act_row
from .util import column_sums
from .products import (
    ACCUMULATE,
    OVERWRITE,
    GemmPlan,
    Operand,
    Packed,
    gemm_task,
    pack_count,
    pack_item,
    pack_pair_item,
    task_block,
    task_count,
)

#: multiply-adds per product from which dense_backward runs the dx and the dW tasks in two launches
SPLIT_WORK = 1 << 21


class DenseGrads(NamedTuple):
    """The gradients dense_backward accumulates into: dx (N, n), dW (m, n), db (m,) or (0,) for no bias."""

    dx: F2
    dW: F2
    db: F1


@helper
def dense_reference(z, x, W, b):
    """z[s, k] = b[k] + sum_j W[k, j] * x[s, j]: the plain loop dense_forward computes (the tests' oracle)."""
    N, n = x.shape
    m = W.shape[0]
    for s in range(N):
        for k in range(m):
            acc = z.dtype.type(0)
            for j in range(n):
                acc += W[k, j] * x[s, j]
            if b.shape[0] == m:
                z[s, k] = b[k] + acc
            else:
                z[s, k] = acc


@helper
def dense_backward_reference(grads, dz, x, W):
    """The plain loops dense_backward computes (the tests' oracle), accumulated (``+=``):

    dW[k, j] += sum_s dz[s, k] x[s, j];  dx[s, j] += sum_k dz[s, k] W[k, j];
    db[k] += sum_s dz[s, k] (when db has shape (m,)).
    """
    N, n = x.shape
    m = W.shape[0]
    zero = dz.dtype.type(0)
    for k in range(m):
        for j in range(n):
            acc = zero
            for s in range(N):
                acc += dz[s, k] * x[s, j]
            grads.dW[k, j] += acc
    for s in range(N):
        for j in range(n):
            acc = zero
            for k in range(m):
                acc += dz[s, k] * W[k, j]
            grads.dx[s, j] += acc
    if grads.db.shape[0] == m:
        for k in range(m):
            acc = zero
            for s in range(N):
                acc += dz[s, k]
            grads.db[k] += acc


@kernel(serial_below=CORE_SERIAL_BELOW)
def dense_forward(y: F2, z: F2, x: F2, W: F2, b: F1, code: int, packed: Packed, plan: GemmPlan):
    """z[s, k] = b[k] + sum_j W[k, j] * x[s, j];  y[s, k] = sigma(z[s, k]).

    Shapes: y, z (N, m) outputs (overwritten; y may be z itself for the
    identity); x (N, n); W (m, n); b (m,) or (0,) for no bias; code selects
    sigma (kernels.activations); packed / plan: the product z = x W^T + b
    (``products.gemm_plan(N, m, n)``).  The activation is applied to each
    task's block of z right after the block is finished, while it is in cache.
    """
    N, n = x.shape
    m = W.shape[0]
    zf = z.reshape(-1)
    a = Operand(x.reshape(-1), n, 1)  # A[s, j] = x[s, j]
    wt = Operand(W.reshape(-1), 1, n)  # B[j, k] = W[k, j]: W^T read in place
    # np.int64(it): numba types a prange index from 0 as uint64 in the parallel twin and as
    # int64 in the serial one; a helper called with it would be compiled once for each.
    for it in prange(pack_count(packed, plan)):
        pack_item(np.int64(it), a, wt, packed, plan)
    for it in prange(task_count(plan)):
        t = np.int64(it)
        gemm_task(t, zf, m, b, OVERWRITE, packed, plan)
        if code != 0:
            i0, i1, j0, j1 = task_block(t, plan)
            for s in range(i0, i1):
                act_row(y[s, j0:j1], z[s, j0:j1], code)


@kernel(dynamic=True, serial_below=CORE_SERIAL_BELOW)  # the dx and dW tasks of one launch may differ in cost
def dense_backward(grads: DenseGrads, dz: F2, x: F2, W: F2, p_dx: Packed, p_dw: Packed, plan_dx: GemmPlan, plan_dw: GemmPlan):
    """Accumulate dx, dW, db (``+=``) from dz = dL/dz, reversing ``z[s, k] = b[k] + sum_j W[k, j] x[s, j]``:

        dx[s, j] += sum_k dL/dz[s, k] * W[k, j]     A = dz (N, m),   B = W (m, n)
        dW[k, j] += sum_s dL/dz[s, k] * x[s, j]     A = dz^T (m, N), B = x (N, n)
        db[k]    += sum_s dL/dz[s, k]               (skipped when db has shape (0,))

    dL/dz = dy * sigma'(z) is computed before this kernel (activations.activation_dz).
    Shapes: grads.dx, x (N, n); grads.dW, W (m, n); grads.db (m,) or (0,); dz (N, m).
    p_dx, plan_dx: packing buffers and plan of dx (``products.gemm_plan(N, n, m)``);
    p_dw, plan_dw: those of dW (``gemm_plan(m, n, N)``).  One launch packs the panels
    of both products, then one or two run their tasks.  (The plans are separate
    arguments: numba cannot lower a NamedTuple taken from another one inside a
    parallel loop.)
    """
    N, n = x.shape
    m = W.shape[0]
    # bundled arrays as local names before any prange (numba issue 5872)
    dxf = grads.dx.reshape(-1)
    dWf = grads.dW.reshape(-1)
    db = grads.db
    none = db[:0]
    a_dx = Operand(dz.reshape(-1), m, 1)  # A[s, k] = dz[s, k]
    b_dx = Operand(W.reshape(-1), n, 1)  # B[k, j] = W[k, j]
    a_dw = Operand(dz.reshape(-1), 1, m)  # A[k, s] = dz[s, k]: dz^T read in place
    b_dw = Operand(x.reshape(-1), n, 1)  # B[s, j] = x[s, j]
    n_dx = pack_count(p_dx, plan_dx)
    for t in prange(n_dx + pack_count(p_dw, plan_dw)):
        pack_pair_item(np.int64(t), n_dx, a_dx, b_dx, p_dx, plan_dx, a_dw, b_dw, p_dw, plan_dw)
    # The tasks of both products in one launch, or the dx tasks then the dW tasks
    # in two once each product has SPLIT_WORK multiply-adds: mixed in one launch the
    # two threads work on different products at once and the large cases ran slower
    # (float32 (128, 512, 512) 1.34 -> 1.17 ms, (512, 1024, 1024) 17.7 -> 15.2 ms,
    # float64 2.73 -> 2.17 / 34.2 -> 27.8 ms), while the small ones pay ~4 us for the
    # second launch ((32, 128, 128): 30 -> 35 us).  AMD EPYC Zen 3, 2 threads, 9
    # interleaved rounds, db summed row by row in both.  The same bits either way.
    t_dx = task_count(plan_dx)
    t_all = t_dx + task_count(plan_dw)
    split = min(plan_dx.m * plan_dx.n * plan_dx.k, plan_dw.m * plan_dw.n * plan_dw.k) >= SPLIT_WORK
    for launch in range(2 if split else 1):
        lo = t_dx if launch == 1 else 0
        hi = t_dx if split and launch == 0 else t_all
        for q in prange(hi - lo):
            t = lo + np.int64(q)
            if t < t_dx:
                gemm_task(t, dxf, n, none, ACCUMULATE, p_dx, plan_dx)
            else:
                gemm_task(t - t_dx, dWf, n, none, ACCUMULATE, p_dw, plan_dw)
                k0, k1, j0, _j1 = task_block(t - t_dx, plan_dw)
                if j0 == 0 and db.shape[0] == m:
                    # db[k] = sum_s dz[s, k] over s in order
                    acc = np.empty(k1 - k0, db.dtype)
                    column_sums(acc, dz.reshape(-1), m, N, k0)
                    for k in range(k0, k1):
                        db[k] += acc[k - k0]
