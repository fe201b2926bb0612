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

from .._jit import helper, kernel
from .activations import act

#: Rows of the streamed matrix kept per cache tile: W (or x) tiles of about
#: 64 KB.  Measured for dx = dz W at (512, 1024, 1024) f32, single thread:
#: untiled 29-33 ms, 64 KB tiles 26 ms, 256 KB tiles 33 ms (L2 is 512 KB per
#: core but shared with the rows being updated and the prefetch streams).
TILE_BYTES = 1 << 16

#: Blocks (of 4 rows) that share one cache tile: 8 blocks = 32 samples.
CHUNK_BLOCKS = 8


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
def _put(z, b, s, k, acc):
    """z[s, k] = b[k] + acc, acc = sum_j W[k, j] * x[s, j]."""
    z[s, k] = acc + b[k] if b.shape[0] == z.shape[1] else acc


@helper
def _dot(x, s, W, k):
    """sum_j W[k, j] * x[s, j] for one (s, k): the edges of the blocked loops."""
    acc = x.dtype.type(0)
    for j in range(x.shape[1]):
        acc += W[k, j] * x[s, j]
    return acc


@helper
def _axpy(out, r, d, src, q):
    """out[r, j] += d * src[q, j] for all j: one term of an edge of the blocked axpy loops."""
    for j in range(out.shape[1]):
        out[r, j] += d * src[q, j]


@kernel
def dense_forward(y, z, x, W, b, code):
    """z[s, k] = b[k] + sum_j W[k, j] * x[s, j];  y[s, k] = sigma(z[s, k]).

    Shapes: y, z (N, m) outputs (overwritten); x (N, n); W (m, n); b (m,) or
    (0,) for no bias; code selects sigma (kernels.activations).

    Loop structure: blocks of 4 samples (s..s+3) x 3 output units (k..k+2),
    12 accumulators, one pass over j: 7 loads feed 12 multiply-adds.
    Measured single thread, (128, 512, 512) f32: one (s, k) at a time 14.9 ms,
    4 x 2 1.23 ms, 2 x 4 1.63 ms, 4 x 3 1.10 ms.
    """
    N, n = x.shape
    m = W.shape[0]
    zero = z.dtype.type(0)
    mb = m - m % 3  # units covered by full 3-unit blocks
    # W is streamed once per block of samples: tile it (KT rows) so a chunk of
    # CB sample blocks reuses it from L2.  (512, 1024, 1024) f32: 15.8 -> 14.9 ms.
    KT, CB = _tiling(m, n * x.itemsize, 3)
    for chunk in prange((N + 4 * CB - 1) // (4 * CB)):
        s_lo = 4 * CB * chunk
        s_hi = min(s_lo + 4 * CB, N)
        s_full = s_lo + (s_hi - s_lo) // 4 * 4  # samples covered by full 4-sample blocks
        for k0 in range(0, mb, KT):
            for s in range(s_lo, s_full, 4):
                for k in range(k0, min(k0 + KT, mb), 3):
                    a00 = zero; a01 = zero; a02 = zero  # noqa: E702  (sample s,   units k, k+1, k+2)
                    a10 = zero; a11 = zero; a12 = zero  # noqa: E702  (sample s+1)
                    a20 = zero; a21 = zero; a22 = zero  # noqa: E702  (sample s+2)
                    a30 = zero; a31 = zero; a32 = zero  # noqa: E702  (sample s+3)
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
                    _put(z, b, s, k, a00); _put(z, b, s, k + 1, a01)  # noqa: E702
                    _put(z, b, s, k + 2, a02); _put(z, b, s + 1, k, a10)  # noqa: E702
                    _put(z, b, s + 1, k + 1, a11); _put(z, b, s + 1, k + 2, a12)  # noqa: E702
                    _put(z, b, s + 2, k, a20); _put(z, b, s + 2, k + 1, a21)  # noqa: E702
                    _put(z, b, s + 2, k + 2, a22); _put(z, b, s + 3, k, a30)  # noqa: E702
                    _put(z, b, s + 3, k + 1, a31); _put(z, b, s + 3, k + 2, a32)  # noqa: E702
        for s in range(s_lo, s_hi):
            for k in range(mb if s < s_full else 0, m):  # edges: units k >= mb, samples s >= s_full
                _put(z, b, s, k, _dot(x, s, W, k))
            # y = sigma(z) as a separate pass over the chunk's rows (still in cache): calling
            # sigma inside the blocked loop made it 2-3x slower (single thread, (32, 128, 128)
            # f32: 68 -> 21 us), the inlined activation table spoils the j loop's registers
            for k in range(m):
                y[s, k] = act(z[s, k], code)


@kernel
def dense_backward(dx, dW, db, dz, x, W):
    """Accumulate dx, dW, db (``+=``) from dz = dL/dz.

    dL/dz[s, k] = dy[s, k] * sigma'(z[s, k])   computed before this kernel by
                                                activations.activation_backward
    dx[s, j]   += sum_k dL/dz[s, k] * W[k, j]   parallel over samples s
    dW[k, j]   += sum_s dL/dz[s, k] * x[s, j]   parallel over output units k
    db[k]      += sum_s dL/dz[s, k]             (skipped when db has shape (0,))

    Shapes: dx, x (N, n); dW, W (m, n); db (m,) or (0,); dz (N, m).

    sigma' is applied in its own element-wise pass rather than inside these
    loops: 32 inlined copies of the activation table spoiled the blocked loops
    registers.  Single thread CPU time, tanh,
    (512, 1024, 1024): f32 67.7 -> 55.0 ms, f64 123.6 -> 115.8 ms; (128, 512, 512)
    f32 5.47 -> 3.68 ms.

    Both products are axpy forms over the contiguous j (the sum runs over the
    other index), blocked 4 output rows x 4 terms of the sum: per j, 4 loads
    of the streamed rows feed 16 multiply-adds into 4 output rows.  Measured
    single thread, dx at (512, 1024, 1024) f32: one term at a time 45 ms,
    2 x 4 32 ms, 4 x 8 52 ms (register spills), 4 x 4 26-29 ms.
    """
    N, n = x.shape
    m = W.shape[0]
    has_bias = db.shape[0] == m

    # dx[s, j] += sum_k dL/dz[s, k] W[k, j]: owners are samples, tiles are rows of W
    mb = m - m % 4
    KT, CB = _tiling(m, n * W.itemsize, 4)
    for chunk in prange((N + 4 * CB - 1) // (4 * CB)):
        s_lo = 4 * CB * chunk
        s_hi = min(s_lo + 4 * CB, N)
        s_full = s_lo + (s_hi - s_lo) // 4 * 4
        for k0 in range(0, mb, KT):
            for s in range(s_lo, s_full, 4):
                for k in range(k0, min(k0 + KT, mb), 4):
                    # dL/dz for samples s..s+3 (first digit) and units k..k+3 (second digit)
                    d00 = dz[s, k]; d01 = dz[s, k + 1]  # noqa: E702
                    d02 = dz[s, k + 2]; d03 = dz[s, k + 3]  # noqa: E702
                    d10 = dz[s + 1, k]; d11 = dz[s + 1, k + 1]  # noqa: E702
                    d12 = dz[s + 1, k + 2]; d13 = dz[s + 1, k + 3]  # noqa: E702
                    d20 = dz[s + 2, k]; d21 = dz[s + 2, k + 1]  # noqa: E702
                    d22 = dz[s + 2, k + 2]; d23 = dz[s + 2, k + 3]  # noqa: E702
                    d30 = dz[s + 3, k]; d31 = dz[s + 3, k + 1]  # noqa: E702
                    d32 = dz[s + 3, k + 2]; d33 = dz[s + 3, k + 3]  # noqa: E702
                    for j in range(n):
                        w0 = W[k, j]
                        w1 = W[k + 1, j]
                        w2 = W[k + 2, j]
                        w3 = W[k + 3, j]
                        dx[s, j] += d00 * w0 + d01 * w1 + d02 * w2 + d03 * w3
                        dx[s + 1, j] += d10 * w0 + d11 * w1 + d12 * w2 + d13 * w3
                        dx[s + 2, j] += d20 * w0 + d21 * w1 + d22 * w2 + d23 * w3
                        dx[s + 3, j] += d30 * w0 + d31 * w1 + d32 * w2 + d33 * w3
        for s in range(s_lo, s_hi):  # edges, after the blocked terms: units k >= mb, samples s >= s_full
            for k in range(mb if s < s_full else 0, m):
                _axpy(dx, s, dz[s, k], W, k)

    # dW[k, j] += sum_s dL/dz[s, k] x[s, j], db[k] += sum_s dL/dz[s, k]:
    # owners are units, tiles are rows of x (the same loop with s and k swapped)
    nb = N - N % 4
    ST, CB = _tiling(N, n * x.itemsize, 4)
    for chunk in prange((m + 4 * CB - 1) // (4 * CB)):
        k_lo = 4 * CB * chunk
        k_hi = min(k_lo + 4 * CB, m)
        k_full = k_lo + (k_hi - k_lo) // 4 * 4
        for s0 in range(0, nb, ST):
            for k in range(k_lo, k_full, 4):
                for s in range(s0, min(s0 + ST, nb), 4):
                    # dL/dz for units k..k+3 (first digit) and samples s..s+3 (second digit)
                    d00 = dz[s, k]; d01 = dz[s + 1, k]  # noqa: E702
                    d02 = dz[s + 2, k]; d03 = dz[s + 3, k]  # noqa: E702
                    d10 = dz[s, k + 1]; d11 = dz[s + 1, k + 1]  # noqa: E702
                    d12 = dz[s + 2, k + 1]; d13 = dz[s + 3, k + 1]  # noqa: E702
                    d20 = dz[s, k + 2]; d21 = dz[s + 1, k + 2]  # noqa: E702
                    d22 = dz[s + 2, k + 2]; d23 = dz[s + 3, k + 2]  # noqa: E702
                    d30 = dz[s, k + 3]; d31 = dz[s + 1, k + 3]  # noqa: E702
                    d32 = dz[s + 2, k + 3]; d33 = dz[s + 3, k + 3]  # noqa: E702
                    if has_bias:
                        db[k] += d00 + d01 + d02 + d03
                        db[k + 1] += d10 + d11 + d12 + d13
                        db[k + 2] += d20 + d21 + d22 + d23
                        db[k + 3] += d30 + d31 + d32 + d33
                    for j in range(n):
                        x0 = x[s, j]
                        x1 = x[s + 1, j]
                        x2 = x[s + 2, j]
                        x3 = x[s + 3, j]
                        dW[k, j] += d00 * x0 + d01 * x1 + d02 * x2 + d03 * x3
                        dW[k + 1, j] += d10 * x0 + d11 * x1 + d12 * x2 + d13 * x3
                        dW[k + 2, j] += d20 * x0 + d21 * x1 + d22 * x2 + d23 * x3
                        dW[k + 3, j] += d30 * x0 + d31 * x1 + d32 * x2 + d33 * x3
        for k in range(k_lo, k_hi):  # edges, after the blocked terms: samples s >= nb, units k >= k_full
            for s in range(nb if k < k_full else 0, N):
                d = dz[s, k]
                if has_bias:
                    db[k] += d
                _axpy(dW, k, d, x, s)
