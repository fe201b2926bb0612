"""Dense layer: the cheat sheet's first section, over a batch of N samples.

Forward (one sample s of the batch)::

    z_k = b_k + sum_j w_kj * x_j          z (N, m), x (N, n), W (m, n), b (m,)
    y_k = sigma(z_k)                      y (N, m)

Backward (the cheat sheet's four lines)::

    dL/dz_k  = dL/dy_k * sigma'(z_k)
    dL/db_k  = dL/dz_k                    summed over the batch
    dL/dw_kj = dL/dz_k * x_j              summed over the batch
    dL/dx_j  = sum_k dL/dz_k * w_kj

Race freedom: ``dx`` rows belong to samples (parallel over s), ``dW``/``db``
rows belong to output units (parallel over k).  Each element is written by one
iteration in a fixed order, so results are bitwise identical at any thread count.

Speed (issue 5): the loops are register-blocked, 4 samples x 3 output units in
the forward and 4 x 4 in the two backward products, with the innermost loop over
the contiguous feature index j.  One load of ``W[k, j]`` / ``x[s, j]`` then feeds
3-4 multiply-adds and LLVM vectorises every scalar accumulator along j
(``reassoc``).  When W (forward, dx) or x (dW) is larger than :data:`products.TILE_BYTES`
the blocked index is also cache-tiled: a tile of rows of the streamed matrix stays
in L2 while a chunk of :data:`products.CHUNK_BLOCKS` blocks of the other index reuses it.
Tiling only reorders *which* elements are computed when, never the order of a
sum, and tiles and chunks depend on the shapes alone (not the thread count).
Measured single thread on the 2-core znver3 box (CPU time, best of 7, through
fastgrad.functional), before -> after, (512, 1024, 1024): forward f32 49 -> 21 ms,
f64 95 -> 42 ms; backward f32 87 -> 66 ms, f64 234 -> 120 ms; (128, 512, 512)
forward + backward f32 9.1 -> 4.6 ms, f64 15.5 -> 10.2 ms.
"""

from typing import NamedTuple

from numba import prange

from .._jit import F1, F2, kernel
from .activations import act
from .products import axpy_rows, dot_rows, tiling, transpose_block

#: Work (N * n * m multiply-adds) from which dense_backward runs its products in
#: dot form on transposed copies.  Measured 2 threads, one process, axpy -> dot
#: (both products): (32, 784, 256) f32 0.33 -> 0.51 ms; (128, 512, 512) f32
#: 1.42 -> 1.28 ms, f64 3.18 -> 2.41 ms; (512, 1024, 1024) f32 31.7 -> 18.6 ms,
#: f64 59.9 -> 36.5 ms.  Below this size the transposes cost more than they save.
DOT_FORM_MIN_WORK = 1 << 25


def dot_form(N: int, n: int, m: int) -> bool:
    """Whether dense_backward should get transposed scratch for shapes (N, n, m)."""
    return N * n * m >= DOT_FORM_MIN_WORK


class DenseGrads(NamedTuple):
    """The gradients dense_backward accumulates into: dx (N, n), dW (m, n), db (m,) or (0,) for no bias."""

    dx: F2
    dW: F2
    db: F1


class DenseScratch(NamedTuple):
    """Transposed copies for the dot form (overwritten): dzT (m, N), xT (n, N), Wt (n, m).

    (0, 0) arrays select the axpy form of the product that would read them (see dense_backward).
    """

    dzT: F2
    xT: F2
    Wt: F2


@kernel
def dense_forward(y: F2, z: F2, x: F2, W: F2, b: F1, code: int):
    """z[s, k] = b[k] + sum_j W[k, j] * x[s, j];  y[s, k] = sigma(z[s, k]).

    Shapes: y, z (N, m) outputs (overwritten); x (N, n); W (m, n); b (m,) or
    (0,) for no bias; code selects sigma (kernels.activations).

    Parallel over chunks of CB blocks of 4 samples; the product is
    ``kernels.products.dot_rows`` (its plain twin: ``dot_rows_reference``).
    """
    N, n = x.shape
    m = W.shape[0]
    KT, CB = tiling(m, n * x.itemsize, 3)
    for chunk in prange((N + 4 * CB - 1) // (4 * CB)):
        s_lo = 4 * CB * chunk
        s_hi = min(s_lo + 4 * CB, N)
        dot_rows(z, x, W, b, False, s_lo, s_hi, KT)
        for s in range(s_lo, s_hi):
            # y = sigma(z) as a separate pass over the chunk's rows (still in cache): calling
            # sigma inside the blocked loop made it 2-3x slower (single thread, (32, 128, 128)
            # f32: 68 -> 21 us), the inlined activation table spoils the j loop's registers
            for k in range(m):
                y[s, k] = act(z[s, k], code)


@kernel(dynamic=True)  # the dx and dW chunks differ in cost: static halves were 22 vs 17 ms (L f32)
def dense_backward(grads: DenseGrads, dz: F2, x: F2, W: F2, scratch: DenseScratch):
    """Accumulate dx, dW, db (``+=``) from dz = dL/dz, reversing ``z[s, k] = b[k] + sum_j W[k, j] x[s, j]``.

    dL/dz[s, k] = dy[s, k] * sigma'(z[s, k])   computed before this kernel by
                                                activations.activation_backward
    dx[s, j]   += sum_k dL/dz[s, k] * W[k, j]   parallel over samples s
    dW[k, j]   += sum_s dL/dz[s, k] * x[s, j]   parallel over output units k
    db[k]      += sum_s dL/dz[s, k]             (skipped when db has shape (0,))

    Shapes: grads.dx, x (N, n); grads.dW, W (m, n); grads.db (m,) or (0,); dz
    (N, m).  Scratch (overwritten, allocated by the caller): Wt (n, m) selects
    the dot form of dx, dzT (m, N) and xT (n, N) select it for dW; shape (0, 0)
    selects the axpy form (the caller decides with :func:`dot_form`).

    sigma' is applied in its own element-wise pass rather than inside these
    loops: 32 inlined copies of the activation table spoiled the blocked loops
    registers.  Single thread CPU time, tanh,
    (512, 1024, 1024): f32 67.7 -> 55.0 ms, f64 123.6 -> 115.8 ms.

    Both sums run over an index that is not contiguous in the arrays they read
    (k in dz[s, k] W[k, j], s in dz[s, k] x[s, j]).  Taken directly they are
    axpy forms (``products.axpy_rows``), which load and store a row of dx / dW
    for every 4 terms.  For large shapes the inputs are first transposed into
    the scratch arrays so both products run in the forward's dot-product form
    (``products.dot_rows``), with the summed index innermost and contiguous::

        dx[s, j] += sum_k Wt[j, k] * dz[s, k]      (dot_rows with x=dz,  W=Wt)
        dW[k, j] += sum_s xT[j, s] * dzT[k, s]     (dot_rows with x=dzT, W=xT)

    Measured 2 threads, medians interleaved in one process, axpy -> dot:
    (512, 1024, 1024) f32 24.9 -> 16.5 ms, f64 44.6 -> 33.5 ms.
    """
    N, n = x.shape
    m = W.shape[0]
    dx = grads.dx
    dW = grads.dW
    db = grads.db
    dzT = scratch.dzT
    xT = scratch.xT
    Wt = scratch.Wt
    dot_dx = Wt.shape[0] == n
    dot_dW = xT.shape[0] == n

    # transposes: one parallel loop over 64-row chunks of the rows each writes
    # (every extra prange is another gufunc for numba to compile, ~1-2 s cold)
    cz = (m + 63) // 64 if dot_dW else 0
    cn = (n + 63) // 64 if dot_dx or dot_dW else 0
    if cz + cn > 0:  # an empty prange still costs a parallel launch (~10 us)
        for c in prange(cz + cn):
            if c < cz:
                transpose_block(dzT, dz, 64 * c, min(64 * c + 64, m))
            else:
                i0 = 64 * (c - cz)
                if dot_dW:
                    transpose_block(xT, x, i0, min(i0 + 64, n))
                if dot_dx:
                    transpose_block(Wt, W, i0, min(i0 + 64, n))

    # One parallel loop over chunks of dx rows (owners: samples) then chunks of
    # dW rows (owners: units), so both products share one launch:
    # dx[s, j] += sum_k dz[s, k] W[k, j];  dW[k, j] += sum_s dz[s, k] x[s, j], db[k] += sum_s dz[s, k]
    if dot_dx:
        KT, CBx = tiling(n, m * W.itemsize, 3)  # tiles are rows of Wt
    else:
        KT, CBx = tiling(m, n * W.itemsize, 4)  # tiles are rows of W
    if dot_dW:
        ST, CBw = tiling(n, N * x.itemsize, 3)  # tiles are rows of xT
    else:
        ST, CBw = tiling(N, n * x.itemsize, 4)  # tiles are rows of x
    nx = (N + 4 * CBx - 1) // (4 * CBx)
    nw = (m + 4 * CBw - 1) // (4 * CBw)
    for chunk in prange(nx + nw):
        if chunk < nx:
            s_lo = 4 * CBx * chunk
            s_hi = min(s_lo + 4 * CBx, N)
            if dot_dx:
                dot_rows(dx, dz, Wt, db, True, s_lo, s_hi, KT)
            else:
                axpy_rows(dx, dz, W, s_lo, s_hi, KT)
        else:
            k_lo = 4 * CBw * (chunk - nx)
            k_hi = min(k_lo + 4 * CBw, m)
            if dot_dW:
                dot_rows(dW, dzT, xT, db, True, k_lo, k_hi, ST)
            else:
                axpy_rows(dW, dz.T, x, k_lo, k_hi, ST)
            if db.shape[0] == m:
                for s in range(N):
                    for k in range(k_lo, k_hi):
                        db[k] += dz[s, k]
