"""The products shared by dense, conv and LSTM: sums of multiply-adds over a contiguous index.

Two forms, each register-blocked so one load feeds several multiply-adds:

* dot form, ``z[s, k] (+)= b[k] + sum_j W[k, j] x[s, j]`` (:func:`dot_rows`,
  and :func:`dot1` / :func:`dot4x1` / :func:`dot4x2` on single rows): the sum
  runs along the contiguous j; LLVM vectorises every scalar accumulator along
  j (``reassoc``) and reduces it once at the end;
* axpy form, ``out[r, j] += sum_q D[r, q] src[q, j]`` (:func:`axpy_rows`, and
  the tap-table products of the stride-1 convolution): each term adds a whole
  contiguous row.

:func:`dot_rows_reference` is the plain index-form loop :func:`dot_rows`
computes (the tests' oracle on edge shapes).  Block sizes were measured on one
2-core AMD Zen 3 box (AVX2); the numbers are beside each helper.
"""

import numpy as np

from .._jit import helper

#: Rows of the streamed matrix kept per cache tile: W (or x) tiles of about
#: 64 KB.  Measured for dx = dz W at (512, 1024, 1024) f32, single thread:
#: untiled 29-33 ms, 64 KB tiles 26 ms, 256 KB tiles 33 ms (L2 is 512 KB per
#: core but shared with the rows being updated and the prefetch streams).
TILE_BYTES = 1 << 16

#: Blocks (of 4 rows) that share one cache tile: 8 blocks = 32 samples.
CHUNK_BLOCKS = 8


@helper
def tiling(rows, row_bytes, block):
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
def store(z, b, s, k, acc, add):
    """z[s, k] = b[k] + acc (no bias: b has shape (0,)), or z[s, k] += acc when ``add``."""
    if add:
        z[s, k] += acc
    elif b.shape[0] == z.shape[1]:
        z[s, k] = acc + b[k]
    else:
        z[s, k] = acc


@helper
def dot_rows_reference(z, x, W, b, add, s_lo, s_hi):
    """z[s, k] (+)= b[k] + sum_j W[k, j] * x[s, j] for s_lo <= s < s_hi: the plain loop :func:`dot_rows` computes."""
    for s in range(s_lo, s_hi):
        for k in range(W.shape[0]):
            acc = z.dtype.type(0)
            for j in range(x.shape[1]):
                acc += W[k, j] * x[s, j]
            store(z, b, s, k, acc, add)


@helper
def dot_one(x, s, W, k):
    """sum_j W[k, j] * x[s, j] for one (s, k): the edges of the blocked loops."""
    acc = x.dtype.type(0)
    for j in range(x.shape[1]):
        acc += W[k, j] * x[s, j]
    return acc


@helper
def dot_rows(z, x, W, b, add, s_lo, s_hi, KT):
    """z[s, k] (+)= b[k] + sum_j W[k, j] * x[s, j] for the rows s_lo <= s < s_hi of z.

    The one product every dense pass runs (forward z = x W^T, and the backward's
    dx = dz W and dW = dz^T x on transposed copies, see kernels.dense).

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
                # accumulator a<row><column>: rows s..s+3, columns k..k+2
                a00 = zero
                a01 = zero
                a02 = zero
                a10 = zero
                a11 = zero
                a12 = zero
                a20 = zero
                a21 = zero
                a22 = zero
                a30 = zero
                a31 = zero
                a32 = zero
                for j in range(n):
                    w0 = W[k, j]
                    w1 = W[k + 1, j]
                    w2 = W[k + 2, j]
                    x0 = x[s, j]
                    x1 = x[s + 1, j]
                    x2 = x[s + 2, j]
                    x3 = x[s + 3, j]
                    a00 += w0 * x0
                    a01 += w1 * x0
                    a02 += w2 * x0
                    a10 += w0 * x1
                    a11 += w1 * x1
                    a12 += w2 * x1
                    a20 += w0 * x2
                    a21 += w1 * x2
                    a22 += w2 * x2
                    a30 += w0 * x3
                    a31 += w1 * x3
                    a32 += w2 * x3
                store(z, b, s, k, a00, add)
                store(z, b, s, k + 1, a01, add)
                store(z, b, s, k + 2, a02, add)
                store(z, b, s + 1, k, a10, add)
                store(z, b, s + 1, k + 1, a11, add)
                store(z, b, s + 1, k + 2, a12, add)
                store(z, b, s + 2, k, a20, add)
                store(z, b, s + 2, k + 1, a21, add)
                store(z, b, s + 2, k + 2, a22, add)
                store(z, b, s + 3, k, a30, add)
                store(z, b, s + 3, k + 1, a31, add)
                store(z, b, s + 3, k + 2, a32, add)
    for s in range(s_lo, s_hi):
        for k in range(mb if s < s_full else 0, m):  # edges: columns k >= mb, rows s >= s_full
            store(z, b, s, k, dot_one(x, s, W, k), add)


@helper
def transpose_block(out, a, i0, i1):
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


@helper
def gather_transpose(dst, src, rows, j0, j1):
    """dst[j - j0, i] = src[rows[i], j] for j0 <= j < j1 (dst rows owned by the caller).

    Tiled by 16 source rows so both the reads and the writes stay in a few
    cache lines.
    """
    n = rows.shape[0]
    for i0 in range(0, n, 16):
        i1 = min(i0 + 16, n)
        for i in range(i0, i1):
            r = rows[i]
            for j in range(j0, j1):
                dst[j - j0, i] = src[r, j]


@helper
def axpy_rows(out, D, src, r_lo, r_hi, QT):
    """out[r, j] += sum_q D[r, q] * src[q, j] for the rows r_lo <= r < r_hi of out.

    The axpy form of a backward product (dx: out=dx, D=dz, src=W; dW: out=dW,
    D=dz^T, src=x): the sum runs over the rows q of ``src`` and each term adds a
    whole row.  Blocked 4 output rows x 4 terms: per j, 4 loads of the streamed
    rows feed 16 multiply-adds into 4 output rows.  Measured single thread, dx at
    (512, 1024, 1024) f32: one term at a time 45 ms, 2 x 4 32 ms, 4 x 8 52 ms
    (register spills), 4 x 4 26-29 ms.  ``src`` is tiled (QT rows) like :func:`dot_rows`.
    """
    n = out.shape[1]
    Q = src.shape[0]
    qb = Q - Q % 4  # terms covered by full 4-term blocks
    r_full = r_lo + (r_hi - r_lo) // 4 * 4
    for q0 in range(0, qb, QT):
        for r in range(r_lo, r_full, 4):
            for q in range(q0, min(q0 + QT, qb), 4):
                # coefficient d<output row><term>: rows r..r+3, terms q..q+3
                d00 = D[r, q]
                d01 = D[r, q + 1]
                d02 = D[r, q + 2]
                d03 = D[r, q + 3]
                d10 = D[r + 1, q]
                d11 = D[r + 1, q + 1]
                d12 = D[r + 1, q + 2]
                d13 = D[r + 1, q + 3]
                d20 = D[r + 2, q]
                d21 = D[r + 2, q + 1]
                d22 = D[r + 2, q + 2]
                d23 = D[r + 2, q + 3]
                d30 = D[r + 3, q]
                d31 = D[r + 3, q + 1]
                d32 = D[r + 3, q + 2]
                d33 = D[r + 3, q + 3]
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


@helper
def dot1(u, v, P):
    """sum_p u[p] v[p] over the first P entries of two contiguous rows."""
    s = u.dtype.type(0)
    for p in range(P):
        s += u[p] * v[p]
    return s


@helper
def dot4x1(u0, u1, u2, u3, v, P):
    """The four sums u_i . v: each load of v feeds four multiply-adds."""
    s0 = u0.dtype.type(0)
    s1 = s0
    s2 = s0
    s3 = s0
    for p in range(P):
        w = v[p]
        s0 += u0[p] * w
        s1 += u1[p] * w
        s2 += u2[p] * w
        s3 += u3[p] * w
    return s0, s1, s2, s3


@helper
def dot4x2(u0, u1, u2, u3, v0, v1, P):
    """The eight sums u_i . v_m (i < 4, m < 2) in one pass over the rows.

    Register tile 4x2: six row loads feed eight multiply-adds (the LSTM's
    recurrent products, which LLVM vectorises with one vector accumulator per sum).
    """
    s00 = u0.dtype.type(0)
    s01 = s00
    s10 = s00
    s11 = s00
    s20 = s00
    s21 = s00
    s30 = s00
    s31 = s00
    for p in range(P):
        w0 = v0[p]
        w1 = v1[p]
        a0 = u0[p]
        a1 = u1[p]
        a2 = u2[p]
        a3 = u3[p]
        s00 += a0 * w0
        s01 += a0 * w1
        s10 += a1 * w0
        s11 += a1 * w1
        s20 += a2 * w0
        s21 += a2 * w1
        s30 += a3 * w0
        s31 += a3 * w1
    return s00, s01, s10, s11, s20, s21, s30, s31


# --------------------------------------------------------------------------
# tap-table products of the stride-1 convolution (kernels.conv)
# --------------------------------------------------------------------------
# A tap table ``taps`` (R, 2) lists, for term t of a sum, the source row
# (``base + taps[t, 0]``) and its offset (``taps[t, 1]``) in a flattened plane;
# the weight of term t for output row r is ``w[r, t]``.  Positions run over
# unsigned indices: with signed ones numba's negative-index wraparound branch
# blocked SIMD (measured).


@helper
def axpy_taps_4x4(out, n, r0, src, base, taps, w, t, cnt):
    """out[n, r0 + q, p] += sum_{e < 4} w[r0 + q, t + e] src[n, base + taps[t + e, 0], taps[t + e, 1] + p].

    For q < 4 and p < cnt: 4 output rows x 4 terms, 4 loads of src feed 16
    multiply-adds per position, one read-modify-write per output row.
    """
    s0 = base + taps[t, 0]
    s1 = base + taps[t + 1, 0]
    s2 = base + taps[t + 2, 0]
    s3 = base + taps[t + 3, 0]
    u0 = np.uint64(taps[t, 1])
    u1 = np.uint64(taps[t + 1, 1])
    u2 = np.uint64(taps[t + 2, 1])
    u3 = np.uint64(taps[t + 3, 1])
    # weight w<row><term>
    w00 = w[r0, t]
    w01 = w[r0, t + 1]
    w02 = w[r0, t + 2]
    w03 = w[r0, t + 3]
    w10 = w[r0 + 1, t]
    w11 = w[r0 + 1, t + 1]
    w12 = w[r0 + 1, t + 2]
    w13 = w[r0 + 1, t + 3]
    w20 = w[r0 + 2, t]
    w21 = w[r0 + 2, t + 1]
    w22 = w[r0 + 2, t + 2]
    w23 = w[r0 + 2, t + 3]
    w30 = w[r0 + 3, t]
    w31 = w[r0 + 3, t + 1]
    w32 = w[r0 + 3, t + 2]
    w33 = w[r0 + 3, t + 3]
    for p in range(np.uint64(cnt)):
        v0 = src[n, s0, u0 + p]
        v1 = src[n, s1, u1 + p]
        v2 = src[n, s2, u2 + p]
        v3 = src[n, s3, u3 + p]
        out[n, r0, p] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
        out[n, r0 + 1, p] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
        out[n, r0 + 2, p] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
        out[n, r0 + 3, p] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3


@helper
def axpy_taps_1x4(out, n, r, src, base, taps, w, t, cnt):
    """out[n, r, p] += sum_{e < 4} w[r, t + e] src[n, base + taps[t + e, 0], taps[t + e, 1] + p] (edge rows)."""
    s0 = base + taps[t, 0]
    s1 = base + taps[t + 1, 0]
    s2 = base + taps[t + 2, 0]
    s3 = base + taps[t + 3, 0]
    u0 = np.uint64(taps[t, 1])
    u1 = np.uint64(taps[t + 1, 1])
    u2 = np.uint64(taps[t + 2, 1])
    u3 = np.uint64(taps[t + 3, 1])
    w0 = w[r, t]
    w1 = w[r, t + 1]
    w2 = w[r, t + 2]
    w3 = w[r, t + 3]
    for p in range(np.uint64(cnt)):
        out[n, r, p] += w0 * src[n, s0, u0 + p] + w1 * src[n, s1, u1 + p] + w2 * src[n, s2, u2 + p] + w3 * src[n, s3, u3 + p]


@helper
def axpy_taps_1x1(out, n, r, src, base, taps, w, t, cnt):
    """out[n, r, p] += w[r, t] src[n, base + taps[t, 0], taps[t, 1] + p] (edge terms)."""
    s0 = base + taps[t, 0]
    u0 = np.uint64(taps[t, 1])
    w0 = w[r, t]
    for p in range(np.uint64(cnt)):
        out[n, r, p] += w0 * src[n, s0, u0 + p]


@helper
def dot_taps_4x3(d, n, m, f, x, ci, taps, t, cnt):
    """The 12 sums sum_p d[n, m + q, f + p] x[n, ci, taps[t + e, 1] + p] for q < 4, e < 3 (p < cnt).

    Returned in the order (q, e) = (0, 0), (0, 1), (0, 2), (1, 0), ...  12
    accumulators: 7 loads feed 12 multiply-adds per position (the dense
    forward's 4 x 3), vectorised along p (reassoc is allowed).
    """
    u0 = np.uint64(taps[t, 1])
    u1 = np.uint64(taps[t + 1, 1])
    u2 = np.uint64(taps[t + 2, 1])
    a00 = d.dtype.type(0)
    a01 = a00
    a02 = a00
    a10 = a00
    a11 = a00
    a12 = a00
    a20 = a00
    a21 = a00
    a22 = a00
    a30 = a00
    a31 = a00
    a32 = a00
    for p in range(np.uint64(cnt)):
        d0 = d[n, m, f + p]
        d1 = d[n, m + 1, f + p]
        d2 = d[n, m + 2, f + p]
        d3 = d[n, m + 3, f + p]
        x0 = x[n, ci, u0 + p]
        x1 = x[n, ci, u1 + p]
        x2 = x[n, ci, u2 + p]
        a00 += d0 * x0
        a01 += d0 * x1
        a02 += d0 * x2
        a10 += d1 * x0
        a11 += d1 * x1
        a12 += d1 * x2
        a20 += d2 * x0
        a21 += d2 * x1
        a22 += d2 * x2
        a30 += d3 * x0
        a31 += d3 * x1
        a32 += d3 * x2
    return a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32


@helper
def dot_taps_1x1(d, n, m, f, x, ci, off, cnt):
    """sum_p d[n, m, f + p] x[n, ci, off + p] for p < cnt (edges)."""
    acc = d.dtype.type(0)
    u0 = np.uint64(off)
    for p in range(np.uint64(cnt)):
        acc += d[n, m, f + p] * x[n, ci, u0 + p]
    return acc
