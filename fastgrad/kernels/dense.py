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
(``reassoc``).  When W (forward, dx) or x (dW) is larger than :data:`TILE_BYTES`
the blocked index is also cache-tiled: a tile of rows of the streamed matrix stays
in L2 while a chunk of :data:`CHUNK_BLOCKS` blocks of the other index reuses it.
Tiling only reorders *which* elements are computed when, never the order of a
sum, and tiles and chunks depend on the shapes alone (not the thread count).
Measured single thread on the 2-core znver3 box (CPU time, best of 7, through
fastgrad.functional), before -> after, (512, 1024, 1024): forward f32 49 -> 21 ms,
f64 95 -> 42 ms; backward f32 87 -> 66 ms, f64 234 -> 120 ms; (128, 512, 512)
forward + backward f32 9.1 -> 4.6 ms, f64 15.5 -> 10.2 ms.
"""

from numba import prange

from .._jit import F1, F2, helper, kernel
from .activations import act

#: Rows of the streamed matrix kept per cache tile: W (or x) tiles of about
#: 64 KB.  Measured for dx = dz W at (512, 1024, 1024) f32, single thread:
#: untiled 29-33 ms, 64 KB tiles 26 ms, 256 KB tiles 33 ms (L2 is 512 KB per
#: core but shared with the rows being updated and the prefetch streams).
TILE_BYTES = 1 << 16

#: Blocks (of 4 rows) that share one cache tile: 8 blocks = 32 samples.
CHUNK_BLOCKS = 8


#: Work (N * n * m multiply-adds) from which dense_backward runs its products in
#: dot form on transposed copies.  Measured 2 threads, one process, axpy -> dot
#: (both products): (32, 784, 256) f32 0.33 -> 0.51 ms; (128, 512, 512) f32
#: 1.42 -> 1.28 ms, f64 3.18 -> 2.41 ms; (512, 1024, 1024) f32 31.7 -> 18.6 ms,
#: f64 59.9 -> 36.5 ms.  Below this size the transposes cost more than they save.
DOT_FORM_MIN_WORK = 1 << 25


def dot_form(N: int, n: int, m: int) -> bool:
    """Whether dense_backward should get transposed scratch for shapes (N, n, m)."""
    return N * n * m >= DOT_FORM_MIN_WORK


@helper
def _tiling(rows, row_bytes, block):
    """(tile_rows, chunk_blocks) for streaming ``rows`` rows of ``row_bytes`` bytes.

    Untiled (one tile, chunks of one block: the most parallel slack) when the
    whole matrix fits in :data:`TILE_BYTES`; else tiles of ``block``-multiple
    rows and chunks of :data:`CHUNK_BLOCKS` blocks of the owner index.
    """
    if rows * row_bytes <= TILE_BYTES:
        return max(rows, 1), 1
    tile = max(block, (TILE_BYTES // row_bytes) // block * block)
    return tile, CHUNK_BLOCKS


@helper
def _put(z, b, s, k, acc, add):
    """z[s, k] = b[k] + acc (no bias: b has shape (0,)), or z[s, k] += acc when ``add``."""
    if add:
        z[s, k] += acc
    elif b.shape[0] == z.shape[1]:
        z[s, k] = acc + b[k]
    else:
        z[s, k] = acc


@helper
def _dot(x, s, W, k):
    """sum_j W[k, j] * x[s, j] for one (s, k): the edges of the blocked loops."""
    acc = x.dtype.type(0)
    for j in range(x.shape[1]):
        acc += W[k, j] * x[s, j]
    return acc


@helper
def _rows(z, x, W, b, add, s_lo, s_hi, KT):
    """z[s, k] (+)= b[k] + sum_j W[k, j] * x[s, j] for the rows s_lo <= s < s_hi of z.

    The one product every dense pass runs (forward z = x W^T, and the backward's
    dx = dz W and dW = dz^T x on transposed copies, see dense_backward).

    Loop structure: blocks of 4 rows s (s..s+3) x 3 columns k (k..k+2), 12
    accumulators, one pass over the contiguous j: 7 loads feed 12 multiply-adds
    and LLVM vectorises every accumulator along j (``reassoc``).
    Measured single thread, forward (128, 512, 512) f32: one (s, k) at a time
    14.9 ms, 4 x 2 1.23 ms, 2 x 4 1.63 ms, 4 x 3 1.10 ms.
    W is streamed once per block of rows: it is tiled (KT rows of W) so all the
    blocks of the chunk reuse a tile from L2.  (512, 1024, 1024) f32: 15.8 -> 14.9 ms.
    """
    n = x.shape[1]
    m = W.shape[0]
    zero = z.dtype.type(0)
    mb = m - m % 3  # columns covered by full 3-column blocks
    s_full = s_lo + (s_hi - s_lo) // 4 * 4  # rows covered by full 4-row blocks
    for k0 in range(0, mb, KT):
        for s in range(s_lo, s_full, 4):
            for k in range(k0, min(k0 + KT, mb), 3):
                a00 = zero; a01 = zero; a02 = zero  # noqa: E702  (row s,   columns k, k+1, k+2)
                a10 = zero; a11 = zero; a12 = zero  # noqa: E702  (row s+1)
                a20 = zero; a21 = zero; a22 = zero  # noqa: E702  (row s+2)
                a30 = zero; a31 = zero; a32 = zero  # noqa: E702  (row s+3)
                for j in range(n):
                    w0 = W[k, j]
                    w1 = W[k + 1, j]
                    w2 = W[k + 2, j]
                    x0 = x[s, j]
                    x1 = x[s + 1, j]
                    x2 = x[s + 2, j]
                    x3 = x[s + 3, j]
                    a00 += w0 * x0; a01 += w1 * x0; a02 += w2 * x0  # noqa: E702
                    a10 += w0 * x1; a11 += w1 * x1; a12 += w2 * x1  # noqa: E702
                    a20 += w0 * x2; a21 += w1 * x2; a22 += w2 * x2  # noqa: E702
                    a30 += w0 * x3; a31 += w1 * x3; a32 += w2 * x3  # noqa: E702
                _put(z, b, s, k, a00, add); _put(z, b, s, k + 1, a01, add)  # noqa: E702
                _put(z, b, s, k + 2, a02, add); _put(z, b, s + 1, k, a10, add)  # noqa: E702
                _put(z, b, s + 1, k + 1, a11, add); _put(z, b, s + 1, k + 2, a12, add)  # noqa: E702
                _put(z, b, s + 2, k, a20, add); _put(z, b, s + 2, k + 1, a21, add)  # noqa: E702
                _put(z, b, s + 2, k + 2, a22, add); _put(z, b, s + 3, k, a30, add)  # noqa: E702
                _put(z, b, s + 3, k + 1, a31, add); _put(z, b, s + 3, k + 2, a32, add)  # noqa: E702
    for s in range(s_lo, s_hi):
        for k in range(mb if s < s_full else 0, m):  # edges: columns k >= mb, rows s >= s_full
            _put(z, b, s, k, _dot(x, s, W, k), add)


@helper
def _transpose(out, a, i0, i1):
    """out[i, r] = a[r, i] for the rows i0 <= i < i1 of out, in 8-row strips of a.

    A strip's 8 rows of ``a`` stay in L1 while ``out`` is written along its rows.
    Strips of 8, not more: rows 4 KB apart map to the same L1 set (8 ways).
    Measured 2 threads, 64-row chunks of out, (1024, 1024) f32: 32-row strips
    1.88 ms, 16 1.07 ms, 8 0.66 ms (numpy's ``W.T`` copy, one thread: 5.1 ms).
    """
    R = a.shape[0]
    for r0 in range(0, R, 8):
        for i in range(i0, i1):
            for r in range(r0, min(r0 + 8, R)):
                out[i, r] = a[r, i]


@kernel
def dense_forward(y: F2, z: F2, x: F2, W: F2, b: F1, code: int):
    """z[s, k] = b[k] + sum_j W[k, j] * x[s, j];  y[s, k] = sigma(z[s, k]).

    Shapes: y, z (N, m) outputs (overwritten); x (N, n); W (m, n); b (m,) or
    (0,) for no bias; code selects sigma (kernels.activations).

    Parallel over chunks of CB blocks of 4 samples; the product is :func:`_rows`.
    """
    N, n = x.shape
    m = W.shape[0]
    KT, CB = _tiling(m, n * x.itemsize, 3)
    for chunk in prange((N + 4 * CB - 1) // (4 * CB)):
        s_lo = 4 * CB * chunk
        s_hi = min(s_lo + 4 * CB, N)
        _rows(z, x, W, b, False, s_lo, s_hi, KT)
        for s in range(s_lo, s_hi):
            # y = sigma(z) as a separate pass over the chunk's rows (still in cache): calling
            # sigma inside the blocked loop made it 2-3x slower (single thread, (32, 128, 128)
            # f32: 68 -> 21 us), the inlined activation table spoils the j loop's registers
            for k in range(m):
                y[s, k] = act(z[s, k], code)


@helper
def _axpy_rows(out, D, src, r_lo, r_hi, QT):
    """out[r, j] += sum_q D[r, q] * src[q, j] for the rows r_lo <= r < r_hi of out.

    The axpy form of a backward product (dx: out=dx, D=dz, src=W; dW: out=dW,
    D=dz^T, src=x): the sum runs over the rows q of ``src`` and each term adds a
    whole row.  Blocked 4 output rows x 4 terms: per j, 4 loads of the streamed
    rows feed 16 multiply-adds into 4 output rows.  Measured single thread, dx at
    (512, 1024, 1024) f32: one term at a time 45 ms, 2 x 4 32 ms, 4 x 8 52 ms
    (register spills), 4 x 4 26-29 ms.  ``src`` is tiled (QT rows) like :func:`_rows`.
    """
    n = out.shape[1]
    Q = src.shape[0]
    qb = Q - Q % 4  # terms covered by full 4-term blocks
    r_full = r_lo + (r_hi - r_lo) // 4 * 4
    for q0 in range(0, qb, QT):
        for r in range(r_lo, r_full, 4):
            for q in range(q0, min(q0 + QT, qb), 4):
                # D for output rows r..r+3 (first digit) and terms q..q+3 (second digit)
                d00 = D[r, q]; d01 = D[r, q + 1]; d02 = D[r, q + 2]; d03 = D[r, q + 3]  # noqa: E702
                d10 = D[r + 1, q]; d11 = D[r + 1, q + 1]; d12 = D[r + 1, q + 2]; d13 = D[r + 1, q + 3]  # noqa: E702
                d20 = D[r + 2, q]; d21 = D[r + 2, q + 1]; d22 = D[r + 2, q + 2]; d23 = D[r + 2, q + 3]  # noqa: E702
                d30 = D[r + 3, q]; d31 = D[r + 3, q + 1]; d32 = D[r + 3, q + 2]; d33 = D[r + 3, q + 3]  # noqa: E702
                for j in range(n):
                    v0 = src[q, j]
                    v1 = src[q + 1, j]
                    v2 = src[q + 2, j]
                    v3 = src[q + 3, j]
                    out[r, j] += d00 * v0 + d01 * v1 + d02 * v2 + d03 * v3
                    out[r + 1, j] += d10 * v0 + d11 * v1 + d12 * v2 + d13 * v3
                    out[r + 2, j] += d20 * v0 + d21 * v1 + d22 * v2 + d23 * v3
                    out[r + 3, j] += d30 * v0 + d31 * v1 + d32 * v2 + d33 * v3
    for r in range(r_lo, r_hi):  # edges, after the blocked terms: terms q >= qb, rows r >= r_full
        for q in range(qb if r < r_full else 0, Q):
            d = D[r, q]
            for j in range(n):
                out[r, j] += d * src[q, j]


@kernel(dynamic=True)  # the dx and dW chunks differ in cost: static halves were 22 vs 17 ms (L f32)
def dense_backward(dx: F2, dW: F2, db: F1, dz: F2, x: F2, W: F2, dzT: F2, xT: F2, Wt: F2):
    """Accumulate dx, dW, db (``+=``) from dz = dL/dz.

    dL/dz[s, k] = dy[s, k] * sigma'(z[s, k])   computed before this kernel by
                                                activations.activation_backward
    dx[s, j]   += sum_k dL/dz[s, k] * W[k, j]   parallel over samples s
    dW[k, j]   += sum_s dL/dz[s, k] * x[s, j]   parallel over output units k
    db[k]      += sum_s dL/dz[s, k]             (skipped when db has shape (0,))

    Shapes: dx, x (N, n); dW, W (m, n); db (m,) or (0,); dz (N, m).  Scratch
    (overwritten, allocated by the caller): Wt (n, m) selects the dot form of
    dx, dzT (m, N) and xT (n, N) select it for dW; shape (0, 0) selects the axpy
    form (the caller decides with :func:`dot_form`).

    sigma' is applied in its own element-wise pass rather than inside these
    loops: 32 inlined copies of the activation table spoiled the blocked loops
    registers.  Single thread CPU time, tanh,
    (512, 1024, 1024): f32 67.7 -> 55.0 ms, f64 123.6 -> 115.8 ms.

    Both sums run over an index that is not contiguous in the arrays they read
    (k in dz[s, k] W[k, j], s in dz[s, k] x[s, j]).  Taken directly they are
    axpy forms (:func:`_axpy_rows`), which load and store a row of dx / dW for
    every 4 terms.  For large shapes the inputs are first transposed into the
    scratch arrays so both products run in the forward's dot-product form
    (:func:`_rows`), with the summed index innermost and contiguous::

        dx[s, j] += sum_k Wt[j, k] * dz[s, k]      (_rows with x=dz,  W=Wt)
        dW[k, j] += sum_s xT[j, s] * dzT[k, s]     (_rows with x=dzT, W=xT)

    Measured 2 threads, medians interleaved in one process, axpy -> dot:
    (512, 1024, 1024) f32 24.9 -> 16.5 ms, f64 44.6 -> 33.5 ms.
    """
    N, n = x.shape
    m = W.shape[0]
    dot_dx = Wt.shape[0] == n
    dot_dW = xT.shape[0] == n

    # transposes: one parallel loop over 64-row chunks of the rows each writes
    # (every extra prange is another gufunc for numba to compile, ~1-2 s cold)
    cz = (m + 63) // 64 if dot_dW else 0
    cn = (n + 63) // 64 if dot_dx or dot_dW else 0
    if cz + cn > 0:  # an empty prange still costs a parallel launch (~10 us)
        for c in prange(cz + cn):
            if c < cz:
                _transpose(dzT, dz, 64 * c, min(64 * c + 64, m))
            else:
                i0 = 64 * (c - cz)
                if dot_dW:
                    _transpose(xT, x, i0, min(i0 + 64, n))
                if dot_dx:
                    _transpose(Wt, W, i0, min(i0 + 64, n))

    # One parallel loop over chunks of dx rows (owners: samples) then chunks of
    # dW rows (owners: units), so both products share one launch:
    # dx[s, j] += sum_k dz[s, k] W[k, j];  dW[k, j] += sum_s dz[s, k] x[s, j], db[k] += sum_s dz[s, k]
    if dot_dx:
        KT, CBx = _tiling(n, m * W.itemsize, 3)  # tiles are rows of Wt
    else:
        KT, CBx = _tiling(m, n * W.itemsize, 4)  # tiles are rows of W
    if dot_dW:
        ST, CBw = _tiling(n, N * x.itemsize, 3)  # tiles are rows of xT
    else:
        ST, CBw = _tiling(N, n * x.itemsize, 4)  # tiles are rows of x
    nx = (N + 4 * CBx - 1) // (4 * CBx)
    nw = (m + 4 * CBw - 1) // (4 * CBw)
    for chunk in prange(nx + nw):
        if chunk < nx:
            s_lo = 4 * CBx * chunk
            s_hi = min(s_lo + 4 * CBx, N)
            if dot_dx:
                _rows(dx, dz, Wt, db, True, s_lo, s_hi, KT)
            else:
                _axpy_rows(dx, dz, W, s_lo, s_hi, KT)
        else:
            k_lo = 4 * CBw * (chunk - nx)
            k_hi = min(k_lo + 4 * CBw, m)
            if dot_dW:
                _rows(dW, dzT, xT, db, True, k_lo, k_hi, ST)
            else:
                _axpy_rows(dW, dz.T, x, k_lo, k_hi, ST)
            if db.shape[0] == m:
                for s in range(N):
                    for k in range(k_lo, k_hi):
                        db[k] += dz[s, k]
