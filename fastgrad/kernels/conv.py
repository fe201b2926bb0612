"""Convolutional layer: the cheat sheet's second section, 1-D and 2-D, over a batch.

The cheat sheet (one sample; X_j input maps, K_kj kernels, B_k bias maps)::

    Z_k       = B_k + sum_j X_j (star) K_kj          (star: cross-correlation)
    Y_k       = sigma(Z_k)
    dL/dZ_k   = dL/dY_k (.) sigma'(Z_k)
    dL/dB_k   = dL/dZ_k
    dL/dK_kj  = X_j (star) dL/dZ_k
    dL/dX_j   = sum_k dL/dZ_k (*) K_kj               (*: full convolution)

Index names in the loops: the cheat sheet's input map j is ``c`` here (``ci``
the absolute channel, ``c`` its index within the group), its output map k is
``k`` (or ``m`` in blocks), and ``(ki, kj)`` are the kernel tap's row and
column.  Written out with stride (sh, sw), padding before (ph0, pw0),
dilation (dil_h, dil_w) and groups (input channel c of group g only meets the
output channels of the same group; Cg = C / groups channels per group)::

    z[n, k, oh, ow] = B[k, oh, ow]
                    + sum_{c < Cg, ki < kh, kj < kw} K[k, c, ki, kj]
                      * x[n, g Cg + c, oh sh + ki dil_h - ph0, ow sw + kj dil_w - pw0]

where positions outside the input read as 0 (zero padding).  One set of
kernels serves both 1-D and 2-D: a 1-D problem is a 2-D one with H = kh = 1.
Every size comes from the :class:`ConvGeometry` the functional layer builds
once per call (``fastgrad.functional.geometry``); no kernel computes one.

Shapes: x (N, C, H, W); K (M, Cg, kh, kw); z, y, dy (N, M, Ho, Wo);
B (M, 1, 1) tied (one bias per output channel, PyTorch's convention),
(M, Ho, Wo) untied (the cheat sheet's full bias maps) or (0, 1, 1) for no bias.

Stride 1 (the common case) runs the ``*_s1`` kernels further down: a zero-padded
copy of the input (written by the forward) and a "wide" dL/dZ (written by the
dL/dK kernel) turn every term into one long contiguous loop (~20x faster than
loops over single output rows; see the notes there).  Other strides, and stride
1 on the smallest planes, run kernels.conv_im2col (products on the product core;
``functional.conv.conv_path`` has the measurements).  The general kernels below
are the plain index form those are tested against: they make no padded copy;
every loop clips its output-column range to the columns that read inside the
input (:func:`col_span`) and skips input rows outside it.  Kernels allocate nothing.

Race freedom (bitwise identical results at any thread count; the ``*_s1``
kernels use the same owners, dK in blocks of 4 output channels):

* forward: parallel over (sample, group, block of 4 output channels); each
  iteration owns the output rows it writes;
* dK, dB: parallel over output channels k (the owner of dK[k] and dB[k]);
* dX: parallel over (sample, input channel) (the owner of dx[n, c]).
"""

from typing import NamedTuple

import numpy as np
from numba import prange

from .._jit import F1, F2, F3, F4, I1, I2, helper, kernel
from .activations import act_row
from .products import dot_taps_1x1, dot_taps_4x3, row_block, row_block_count, tap_row
from .simd import sload, sstore


class ConvGeometry(NamedTuple):
    """Every size of one convolution, built and validated once by the functional layer.

    Heights first; 1-D problems have H = kh = Ho = 1, sh = dil_h = 1, ph0 = ph1 = 0.
    The output size is ``(H + ph0 + ph1 - (kh - 1) dil_h - 1) // sh + 1``
    (``fastgrad.functional.geometry.output_size``).  The last seven fields
    describe the stride-1 "wide" layout (see the section below): Hp, Wp the
    padded input; Lz the wide output positions per plane; PS the padded
    input plane length; front the largest tap offset; Qr the wide input
    positions per plane of dL/dX; LD = front + Qr the wide dL/dZ plane length.
    """

    N: int
    C: int
    H: int
    W: int
    M: int
    groups: int
    Cg: int
    Mg: int
    kh: int
    kw: int
    Ho: int
    Wo: int
    sh: int
    sw: int
    ph0: int
    ph1: int
    pw0: int
    pw1: int
    dil_h: int
    dil_w: int
    Hp: int
    Wp: int
    Lz: int
    PS: int
    front: int
    Qr: int
    LD: int


class Tap(NamedTuple):
    """One kernel tap (c, ki, kj) met by one output row, in the general kernels.

    ci = g Cg + c is the absolute input channel and ih the input row it reads;
    the output columns ow in [lo, hi) read input column ow sw + off, all inside x.
    """

    ci: int
    ih: int
    c: int
    ki: int
    kj: int
    lo: int
    hi: int
    off: int


#: output channels handled together by one forward iteration: the input row is
#: loaded once for 4 multiply-adds.  Measured on the 2-core test machine at
#: (N, C, H, M, k) = (32, 16, 32, 32, 3): 4 channels ran ~1.8x faster than 1.
BLOCK = 4


@helper
def col_span(off, s, W, Wo):
    """The output columns ow in [lo, hi) whose input column ow*s + off lies in [0, W).

    ``off = kj dil_w - pw0`` is the tap's column offset; clipping the loop range
    replaces reading a zero-padded copy of the input.
    """
    lo = 0
    if off < 0:
        lo = (-off + s - 1) // s  # past Wo when the tap is left of x for every column: then hi = lo
    hi = (W - 1 - off) // s + 1  # floor division: negative when the tap never lands
    hi = min(hi, Wo)
    hi = max(hi, lo)
    return lo, hi


@helper
def row_tap(geo, oh, g, c, ki, kj):
    """The Tap of kernel position (c, ki, kj) for output row oh of group g (its ih may lie outside x)."""
    ih = oh * geo.sh + ki * geo.dil_h - geo.ph0
    off = kj * geo.dil_w - geo.pw0
    lo, hi = col_span(off, geo.sw, geo.W, geo.Wo)
    return Tap(g * geo.Cg + c, ih, c, ki, kj, lo, hi, off)


@helper
def _fwd_tap(z, x, K, n, m0, nm, oh, tap, s):
    """z[n, m0 + q, oh, ow] += K[m0 + q, c, ki, kj] * x[n, ci, ih, ow s + off] for ow in [lo, hi), q < nm."""
    # Unsigned column indices: with signed ``ow + off`` numba's negative-index
    # wraparound branch blocked SIMD and every tap ran scalar; slicing instead
    # cost ~100 ns of view set-up per tap on 8x8 images (both measured).
    cnt = np.uint64(tap.hi - tap.lo)
    u0 = np.uint64(tap.lo)
    b0 = np.uint64(tap.lo * s + tap.off)
    su = np.uint64(s)
    c = tap.c
    ki = tap.ki
    kj = tap.kj
    if nm == BLOCK:
        k0 = K[m0, c, ki, kj]
        k1 = K[m0 + 1, c, ki, kj]
        k2 = K[m0 + 2, c, ki, kj]
        k3 = K[m0 + 3, c, ki, kj]
        for t in range(cnt):
            v = x[n, tap.ci, tap.ih, b0 + t * su]
            z[n, m0, oh, u0 + t] += k0 * v
            z[n, m0 + 1, oh, u0 + t] += k1 * v
            z[n, m0 + 2, oh, u0 + t] += k2 * v
            z[n, m0 + 3, oh, u0 + t] += k3 * v
    else:
        for q in range(nm):
            kq = K[m0 + q, c, ki, kj]
            for t in range(cnt):
                z[n, m0 + q, oh, u0 + t] += kq * x[n, tap.ci, tap.ih, b0 + t * su]


@helper
def _dot_tap(dz, x, n, k, oh, tap, s, acc):
    """acc + sum_{ow in [lo, hi)} dz[n, k, oh, ow] * x[n, ci, ih, ow s + off] (vectorised: reassoc is allowed)."""
    cnt = np.uint64(tap.hi - tap.lo)
    u0 = np.uint64(tap.lo)
    b0 = np.uint64(tap.lo * s + tap.off)
    su = np.uint64(s)
    for t in range(cnt):
        acc += dz[n, k, oh, u0 + t] * x[n, tap.ci, tap.ih, b0 + t * su]
    return acc


@helper
def _data_tap(dx, dz, K, n, m0, nm, oh, tap, s):
    """dx[n, ci, ih, ow s + off] += sum_{q < nm} K[m0 + q, c, ki, kj] * dz[n, m0 + q, oh, ow] for ow in [lo, hi)."""
    cnt = np.uint64(tap.hi - tap.lo)
    u0 = np.uint64(tap.lo)
    b0 = np.uint64(tap.lo * s + tap.off)
    su = np.uint64(s)
    c = tap.c
    ki = tap.ki
    kj = tap.kj
    if nm == BLOCK:
        k0 = K[m0, c, ki, kj]
        k1 = K[m0 + 1, c, ki, kj]
        k2 = K[m0 + 2, c, ki, kj]
        k3 = K[m0 + 3, c, ki, kj]
        # one read-modify-write of dx per 4 multiply-adds
        for t in range(cnt):
            d0 = k0 * dz[n, m0, oh, u0 + t]
            d1 = k1 * dz[n, m0 + 1, oh, u0 + t]
            d2 = k2 * dz[n, m0 + 2, oh, u0 + t]
            d3 = k3 * dz[n, m0 + 3, oh, u0 + t]
            dx[n, tap.ci, tap.ih, b0 + t * su] += d0 + d1 + d2 + d3
    else:
        for q in range(nm):
            kq = K[m0 + q, c, ki, kj]
            for t in range(cnt):
                dx[n, tap.ci, tap.ih, b0 + t * su] += kq * dz[n, m0 + q, oh, u0 + t]


@helper
def _bias_rows(z, B, n, m0, nm, oh):
    """z[n, m0 + q, oh, :] = B (tied: B[k, 0, 0]; untied: B[k, oh, :]; none: 0) for q < nm."""
    zero = z.dtype.type(0)
    has_bias = B.shape[0] == z.shape[1]
    untied = B.shape[1] * B.shape[2] > 1
    for q in range(nm):
        for ow in range(z.shape[3]):
            if not has_bias:
                z[n, m0 + q, oh, ow] = zero
            elif untied:
                z[n, m0 + q, oh, ow] = B[m0 + q, oh, ow]
            else:
                z[n, m0 + q, oh, ow] = B[m0 + q, 0, 0]


@kernel
def conv_forward(y: F4, z: F4, x: F4, K: F4, B: F3, geo: ConvGeometry, code: int):
    """Z_k = B_k + sum_j X_j (star) K_kj,  Y_k = sigma(Z_k)  (cheat sheet), with
    stride, zero padding, dilation and groups::

        z[n, k, oh, ow] = B[k, oh, ow] + sum_{c, ki, kj} K[k, c, ki, kj]
                          * x[n, g Cg + c, oh sh + ki dil_h - ph0, ow sw + kj dil_w - pw0]
        y[n, k, oh, ow] = sigma(z[n, k, oh, ow])

    Shapes: y, z (N, M, Ho, Wo) outputs, overwritten (y may be z itself for the
    identity); x (N, C, H, W); K (M, Cg, kh, kw); B (M, 1, 1) tied,
    (M, Ho, Wo) untied or (0, 1, 1) none; geo the ConvGeometry; code selects sigma.
    """
    G = geo.groups
    Mg = geo.Mg
    nblk = (Mg + BLOCK - 1) // BLOCK
    for it in prange(geo.N * G * nblk):
        t = np.int64(it)  # one compiled copy of each helper in both twins (a prange index is uint64)
        n = t // (G * nblk)
        g = (t // nblk) % G
        m0 = g * Mg + (t % nblk) * BLOCK
        nm = min(BLOCK, g * Mg + Mg - m0)
        for oh in range(geo.Ho):
            _bias_rows(z, B, n, m0, nm, oh)
            for c in range(geo.Cg):
                for ki in range(geo.kh):
                    for kj in range(geo.kw):
                        tap = row_tap(geo, oh, g, c, ki, kj)
                        if tap.ih >= 0 and tap.ih < geo.H:  # else a padding row: contributes 0
                            _fwd_tap(z, x, K, n, m0, nm, oh, tap, geo.sw)
            if code != 0:
                for q in range(nm):
                    act_row(y[n, m0 + q, oh], z[n, m0 + q, oh], code)


@helper
def bias_grad(dB, dz, n, k):
    """dB[k] += dL/dZ_k of sample n: summed over positions when tied, per position when untied."""
    if dB.shape[0] != dz.shape[1]:
        return
    if dB.shape[1] * dB.shape[2] > 1:
        for oh in range(dz.shape[2]):
            for ow in range(dz.shape[3]):
                dB[k, oh, ow] += dz[n, k, oh, ow]
    else:
        acc = dB.dtype.type(0)
        for oh in range(dz.shape[2]):
            for ow in range(dz.shape[3]):
                acc += dz[n, k, oh, ow]
        dB[k, 0, 0] += acc


@kernel
def conv_backward_filter(dK: F4, dB: F3, dz: F4, x: F4, geo: ConvGeometry):
    """dL/dK_kj = X_j (star) dL/dZ_k and dL/dB_k = dL/dZ_k (cheat sheet), accumulated.

    With stride and dilation the cross-correlation of the input with dL/dZ
    steps through the input with the stride and the kernel taps with the
    dilation (the reverse of the forward line ``z[n,k,oh,ow] += K[k,c,ki,kj] * x[...]``)::

        dK[k, c, ki, kj] += sum_{n, oh, ow} dz[n, k, oh, ow]
                            * x[n, g Cg + c, oh sh + ki dil_h - ph0, ow sw + kj dil_w - pw0]
        dB[k, 0, 0]      += sum_{n, oh, ow} dz[n, k, oh, ow]        tied
        dB[k, oh, ow]    += sum_n dz[n, k, oh, ow]                  untied (bias maps)

    Shapes: dK (M, Cg, kh, kw); dB (M, 1, 1), (M, Ho, Wo) or (0, 1, 1);
    dz (N, M, Ho, Wo) = dL/dZ; x (N, C, H, W).  Parallel over k, which owns dK[k]
    and dB[k]; each element is summed in a fixed order (bitwise deterministic).
    """
    for kk in prange(geo.M):
        k = np.int64(kk)  # as in the serial twin (a prange index is uint64): one compiled copy of each helper
        g = k // geo.Mg
        for n in range(geo.N):
            for c in range(geo.Cg):
                for ki in range(geo.kh):
                    for kj in range(geo.kw):
                        acc = dK.dtype.type(0)
                        for oh in range(geo.Ho):
                            tap = row_tap(geo, oh, g, c, ki, kj)
                            if tap.ih >= 0 and tap.ih < geo.H:
                                acc = _dot_tap(dz, x, n, k, oh, tap, geo.sw, acc)
                        dK[k, c, ki, kj] += acc
            bias_grad(dB, dz, n, k)


@kernel
def conv_backward_data(dx: F4, dz: F4, K: F4, geo: ConvGeometry):
    """dL/dX_j = sum_k dL/dZ_k (*) K_kj (cheat sheet), accumulated into dx.

    The full convolution of the stride-dilated upstream gradient with the
    kernel: dL/dZ is spread out by the stride (zeros between its entries), the
    kernel taps are spaced by the dilation, and the result is cropped by the
    padding.  Without materialising any of that, the same sum is the reverse
    of the forward line ``z[n,k,oh,ow] += K[k,c,ki,kj] * x[n,ci,ih,iw]``::

        dx[n, g Cg + c, oh sh + ki dil_h - ph0, ow sw + kj dil_w - pw0] += K[k, c, ki, kj] * dz[n, k, oh, ow]

    summed over the output channels k of group g and all (oh, ow, ki, kj) whose
    input position lies inside x.  Shapes: dx (N, C, H, W); dz (N, M, Ho, Wo);
    K (M, Cg, kh, kw).  Parallel over (n, input channel), the owner of dx[n, c];
    the per-element sum order is fixed (bitwise deterministic).
    """
    Mg = geo.Mg
    for t in prange(geo.N * geo.C):
        n = t // geo.C
        ci = t % geo.C
        g = ci // geo.Cg
        c = ci % geo.Cg
        for m0 in range(g * Mg, g * Mg + Mg, BLOCK):
            nm = min(BLOCK, g * Mg + Mg - m0)
            for oh in range(geo.Ho):
                for ki in range(geo.kh):
                    for kj in range(geo.kw):
                        tap = row_tap(geo, oh, g, c, ki, kj)
                        if tap.ih >= 0 and tap.ih < geo.H:
                            _data_tap(dx, dz, K, n, m0, nm, oh, tap, geo.sw)


# --------------------------------------------------------------------------
# stride-1 fast path: "wide" flattened planes
# --------------------------------------------------------------------------
#
# With stride 1 the cheat sheet's sums read a zero-padded input plane of width
# Wp = W + pw0 + pw1 at a constant offset per tap.  Number output positions in
# that width, p = oh Wp + ow ("wide" positions, ow < Wp; the Wp - Wo columns
# past Wo are computed and thrown away), then the tap (c, ki, kj) reads
#
#     x[n, c, oh + ki dil_h - ph0, ow + kj dil_w - pw0] = xp[n, c, p + ki dil_h Wp + kj dil_w]
#
# from the padded copy xp: every term of every sum becomes one long contiguous
# loop over p instead of Ho loops of Wo.  The copy is O(input); the loops are
# O(input * M * kh * kw).  Trip counts are rounded up to a multiple of ROUND so
# the vectorised loop never falls into its scalar remainder (8x8 images: a
# 78-long plane ran 14 of 78 positions scalar, slower than the 64 in vector).
# Measured single thread, CPU time (best of 7) through fastgrad.functional,
# forward + backward, stride-1 taps over Wo-long rows -> wide planes:
# (16, 64, 28, 64, 3) f32 964 -> 46 ms, f64 1104 -> 84 ms; (32, 16, 32, 32, 3)
# f32 295 -> 18 ms, f64 336 -> 34 ms; (32, 1, 28, 8, 5) f32 9.3 -> 1.0 ms;
# 8x8 'same' (32, 16, 8, 32, 3) f32 54 -> 4.8 ms.  ROUND 16 instead of 32 made
# no measurable difference (the loops carry 4-16 accumulator streams).
#
# The terms of a sum are listed once per call by the functional layer: the
# forward and dL/dX read a table of flat source offsets ``tapoff`` and weights
# packed one row block per term (``products.tap_row``: rows of the core's
# register tile, output channels x wide positions); dL/dK reads the (R, 2) table ``taps`` of
# (channel, shift) pairs.  Measured 2 threads (AMD Zen 3), forward + backward
# f32: see the notes of the commit that introduced tap_tile.

#: trip counts are rounded up to a multiple of this (>= vector width x unroll)
ROUND = 32


@helper
def _embed_plane(dst, d0, length, src, s0, rows, cols, base, ld):
    """dst.flat[d0 + base + r ld + j] = src.flat[s0 + r cols + j] for r < rows, j < cols; every
    other value of dst.flat[d0 : d0 + length] zero.

    One plane of the wide layout from a dense (rows, cols) plane: the padded
    input (base = ph0 Wp + pw0, ld = Wp) and the wide dL/dZ (base = front,
    ld = Wp).  Flat indices without numba's negative-index code: with 3-D
    indexing the copies ran scalar and widening in the kernel was slower than
    in NumPy at (32, 1, 28, 8, 5) (0.262 against 0.227 ms; flat: 0.183 ms).
    """
    zero = dst.dtype.type(0)
    q = 0
    for r in range(rows):
        start = base + r * ld
        for j in range(q, start):
            sstore(dst, d0 + j, zero)
        for j in range(cols):
            sstore(dst, d0 + start + j, sload(src, s0 + r * cols + j))
        q = start + cols
    for j in range(q, length):
        sstore(dst, d0 + j, zero)


@kernel
def conv_forward_s1(y: F4, z: F4, xp: F3, x: F4, wp: F1, B: F3, geo: ConvGeometry, code: int, zw: F3, tapoff: I1):
    """The forward of :func:`conv_forward` for stride 1, over wide positions p = oh Wp + ow::

        xp[n, c, (ih + ph0) Wp + iw + pw0] = x[n, c, ih, iw]          (zero everywhere else)
        zw[n, k, p] = sum_{t = (c, ki, kj)} K[k, c, ki, kj] * xp[n, g Cg + c, p + ki dil_h Wp + kj dil_w]
        z[n, k, oh, ow] = B[k, oh, ow] + zw[n, k, oh Wp + ow]        (ow < Wo)
        y[n, k, oh, ow] = sigma(z[n, k, oh, ow])

    i.e. Z_k = B_k + sum_j X_j (star) K_kj with xp the zero-padded input.
    Shapes: y, z (N, M, Ho, Wo) overwritten; xp (N, C, PS) the padded input,
    written here from x (N, C, H, W) (the backward's dL/dK reads it too); wp
    the weights packed per group and row block of output channels
    (``products.pack_tap_weights``: for each term t = (c kh + ki) kw + kj the
    values K[m0 + i, c, ki, kj] of the block's channels, zeros past the group's);
    B as :func:`conv_forward`; zw (N, M, Lz) workspace;
    tapoff (Cg kh kw,) the offset c PS + ki dil_h Wp + kj dil_w of each term.
    Parallel over (sample, group, row block of output channels), the owner of
    z[n, k] and zw[n, k]; each block is one row of register tiles
    (``products.tap_row``) along the wide positions, after one parallel pass
    over the planes (n, c) pads x.  The padding and the sum into z use flat
    indices (:func:`_embed_plane`): measured in one process against NumPy's
    padded copy and 4-D indexing (AMD EPYC Zen 3, 2 threads, float32, min of
    7 rounds), (32, 16, 32, 32, 3) 2.30 -> 1.99 ms, (16, 64, 28, 64, 3) 5.95 ->
    5.48 ms, (32, 3, 32, 16, 3) 'same' 0.81 -> 0.44 ms, (32, 1, 28, 8, 5) 0.158
    -> 0.160 ms.
    """
    G = geo.groups
    Mg = geo.Mg
    nblk = row_block_count(Mg)
    xpf = xp.reshape(-1)
    xf = x.reshape(-1)
    zf = z.reshape(-1)
    zwf = zw.reshape(-1)
    for t in prange(geo.N * geo.C):
        _embed_plane(xpf, t * geo.PS, geo.PS, xf, t * geo.H * geo.W, geo.H, geo.W, geo.ph0 * geo.Wp + geo.pw0, geo.Wp)
    for t in prange(geo.N * G * nblk):
        n = t // (G * nblk)
        g = (t // nblk) % G
        mb = t % nblk
        r0, nm = row_block(mb, Mg)
        m0 = g * Mg + r0
        sbase = (n * geo.C + g * geo.Cg) * geo.PS
        tap_row(wp, g * nblk + mb, xpf, sbase, tapoff, zwf, (n * geo.M + m0) * geo.Lz, geo.Lz, nm)
        for oh in range(geo.Ho):
            _bias_rows(z, B, n, m0, nm, oh)
        for q in range(nm):
            m = m0 + q
            zb = (n * geo.M + m) * geo.Ho * geo.Wo
            wb = (n * geo.M + m) * geo.Lz
            for oh in range(geo.Ho):
                for ow in range(geo.Wo):
                    i = zb + oh * geo.Wo + ow
                    sstore(zf, i, sload(zf, i) + sload(zwf, wb + oh * geo.Wp + ow))  # z[n, m, oh, ow] += zw[n, m, oh Wp + ow]
            if code != 0:
                for oh in range(geo.Ho):
                    act_row(y[n, m, oh], z[n, m, oh], code)


@kernel
def conv_backward_filter_s1(dK2: F2, dB: F3, dz: F4, dzw: F3, xp: F3, geo: ConvGeometry, taps: I2):
    """dL/dK_kj = X_j (star) dL/dZ_k, dL/dB_k = dL/dZ_k for stride 1, accumulated, over wide positions::

        dzw[n, k, front + oh Wp + ow] = dz[n, k, oh, ow]  (ow < Wo; zero everywhere else)
        dK[k, c, ki, kj] += sum_{n, p} dzw[n, k, front + p] * xp[n, g Cg + c, p + ki dil_h Wp + kj dil_w]
        dB as :func:`conv_backward_filter`

    (dzw is dL/dZ at p = oh Wp + ow, zero in the dropped columns ow >= Wo.)
    Shapes: dK2 (M, Cg kh kw) the flattened dK; dB (M, 1, 1), (M, Ho, Wo) or
    (0, 1, 1); dz (N, M, Ho, Wo); dzw (N, M, LD) the wide dL/dZ, overwritten
    here for :func:`conv_backward_data_s1`, which runs after; xp (N, C, PS)
    the padded input; taps the forward's tap table (its first kh kw rows,
    channel 0, give the offsets of the taps (ki, kj)).  Parallel over blocks of
    4 output channels k, the owners of dK[k], dB[k] and dzw[:, k]; 4 channels x
    3 taps per pass.  Each block widens its own rows of dz for one sample just
    before its dot products read them, while they are in cache (widening all
    of dz in NumPy first, a zero fill and strided row copies, then dL/dK:
    measured in one process, AMD EPYC Zen 3, 2 threads, float32, min of 7
    rounds: (32, 1, 28, 8, 5) 0.239 -> 0.183 ms, (32, 16, 32, 32, 3) 3.57 ->
    3.19 ms, (16, 64, 28, 64, 3) 8.05 -> 7.33 ms, (32, 3, 32, 16, 3) 'same'
    0.69 -> 0.45 ms).
    """
    T = geo.kh * geo.kw
    Tb = T - T % 3
    fu = np.uint64(geo.front)
    Mg = geo.Mg
    nblk = (Mg + BLOCK - 1) // BLOCK
    for t in prange(geo.groups * nblk):
        g = t // nblk
        m0 = g * Mg + (t % nblk) * BLOCK
        nm = min(BLOCK, g * Mg + Mg - m0)
        for n in range(geo.N):
            for k in range(m0, m0 + nm):
                plane = n * geo.M + k
                _embed_plane(dzw, plane * geo.LD, geo.LD, dz, plane * geo.Ho * geo.Wo, geo.Ho, geo.Wo, geo.front, geo.Wp)
            for c in range(geo.Cg):
                ci = g * geo.Cg + c
                if nm == BLOCK:
                    for r in range(0, Tb, 3):
                        sums = dot_taps_4x3(dzw, n, m0, fu, xp, ci, taps, r, geo.Lz)
                        for q in range(4):
                            for e in range(3):
                                dK2[m0 + q, c * T + r + e] += sums[3 * q + e]
                    for r in range(Tb, T):
                        for q in range(BLOCK):
                            dK2[m0 + q, c * T + r] += dot_taps_1x1(dzw, n, m0 + q, fu, xp, ci, taps[r, 1], geo.Lz)
                else:
                    for q in range(nm):
                        for r in range(T):
                            dK2[m0 + q, c * T + r] += dot_taps_1x1(dzw, n, m0 + q, fu, xp, ci, taps[r, 1], geo.Lz)
            for k in range(m0, m0 + nm):
                bias_grad(dB, dz, n, k)


@kernel
def conv_backward_data_s1(dx: F4, dzw: F3, kt: F1, geo: ConvGeometry, dxw: F3, tapoff: I1):
    """dL/dX_j = sum_k dL/dZ_k (*) K_kj for stride 1, accumulated into dx, over wide positions::

        dxw[n, c, q] = sum_{k, ki, kj} K[k, c, ki, kj] * dzw[n, k, front + q - ki dil_h Wp - kj dil_w]
        dx[n, c, ih, iw] += dxw[n, c, (ih + ph0) Wp + iw + pw0]

    (the full convolution: dzw is dL/dZ at wide positions, zero outside, so the
    sum runs over exactly the (k, ki, kj, oh, ow) of the forward that read x[n, c, ih, iw]).
    Shapes: dx (N, C, H, W); dzw (N, M, LD) the wide dL/dZ; kt the weights
    packed per group and row block of input channels (``products.pack_tap_weights``:
    for each term t = (k kh + ki) kw + kj the values K[g Mg + k, c0 + i, ki, kj]); dxw
    (N, C, Qr) workspace; tapoff (Mg kh kw,) the offset k LD + front - ki dil_h
    Wp - kj dil_w of each term.  Parallel over (sample, group, row block of input
    channels), the owner of dx[n, c] and dxw[n, c]; register tiles as the forward's.
    """
    Cg = geo.Cg
    cblk = row_block_count(Cg)
    dzwf = dzw.reshape(-1)
    dxwf = dxw.reshape(-1)
    for it in prange(geo.N * geo.groups * cblk):
        t = np.int64(it)  # as in conv_forward_s1
        n = t // (geo.groups * cblk)
        g = (t // cblk) % geo.groups
        cb = t % cblk
        r0, nc = row_block(cb, Cg)
        c0 = g * Cg + r0
        sbase = (n * geo.M + g * geo.Mg) * geo.LD
        tap_row(kt, g * cblk + cb, dzwf, sbase, tapoff, dxwf, (n * geo.C + c0) * geo.Qr, geo.Qr, nc)
        for q in range(nc):
            c = c0 + q
            for ih in range(geo.H):
                b = (ih + geo.ph0) * geo.Wp + geo.pw0
                for iw in range(geo.W):
                    dx[n, c, ih, iw] += dxw[n, c, b + iw]
