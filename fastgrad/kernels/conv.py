"""Convolutional layer: the cheat sheet's second section, 1-D and 2-D, over a batch.

The cheat sheet (one sample; X_j input maps, K_kj kernels, B_k bias maps)::

    Z_k       = B_k + sum_j X_j (star) K_kj          (star: cross-correlation)
    Y_k       = sigma(Z_k)
    dL/dZ_k   = dL/dY_k (.) sigma'(Z_k)
    dL/dB_k   = dL/dZ_k
    dL/dK_kj  = X_j (star) dL/dZ_k
    dL/dX_j   = sum_k dL/dZ_k (*) K_kj               (*: full convolution)

Written out in index form with stride (sh, sw), padding before (ph0, pw0),
dilation (dh, dw) and groups (channel j of group g only meets output channels
k of the same group; Cg = C / groups input channels per group), the forward is::

    z[n, k, oh, ow] = B[k, oh, ow]
                    + sum_{c < Cg, i < kh, j < kw} K[k, c, i, j] * x[n, g Cg + c, oh sh + i dh - ph0, ow sw + j dw - pw0]

where positions outside the input read as 0 (zero padding).  One set of
kernels serves both 1-D and 2-D: a 1-D problem is a 2-D one with H = kh = 1.

Shapes: x (N, C, H, W); K (M, Cg, kh, kw); z, y, dy (N, M, Ho, Wo);
B (M, 1, 1) tied (one bias per output channel, PyTorch's convention),
(M, Ho, Wo) untied (the cheat sheet's full bias maps) or (0, 1, 1) for no bias.

Stride 1 (the common case) runs the ``*_s1`` kernels further down: a zero-padded
copy of the input and a "wide" dL/dZ, made by :func:`pad_wide` / :func:`widen_dz`
in the functional layer, turn every term into one long contiguous loop (~20x
faster than loops over single output rows; see the notes there).  Other
strides use the general kernels below, which make no padded copy: every loop
clips its output-column range to the columns that read inside the input
(:func:`col_span`) and skips input rows outside it.  Kernels allocate nothing.

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

from .._jit import F1, F3, F4, helper, kernel
from .activations import act, dact


class ConvDims(NamedTuple):
    """Hyper-parameters of one convolution (heights first; 1-D uses sh=dh=1, ph0=ph1=0).

    ph0/ph1 and pw0/pw1 are the zero padding before/after the input rows and
    columns.  The output size is ``(H + ph0 + ph1 - (kh - 1) dh - 1) // sh + 1``.
    """

    sh: int
    sw: int
    ph0: int
    ph1: int
    pw0: int
    pw1: int
    dh: int
    dw: int
    groups: int


#: output channels handled together by one forward iteration: the input row is
#: loaded once for 4 multiply-adds.  Measured on the 2-core test machine at
#: (N, C, H, M, k) = (32, 16, 32, 32, 3): 4 channels ran ~1.8x faster than 1.
BLOCK = 4


@helper
def col_span(off, s, W, Wo):
    """The output columns ow in [lo, hi) whose input column ow*s + off lies in [0, W).

    ``off = j dw - pw0`` is the tap's column offset; clipping the loop range
    replaces reading a zero-padded copy of the input.
    """
    lo = 0
    if off < 0:
        lo = (-off + s - 1) // s
    hi = (W - 1 - off) // s + 1  # floor division: negative when the tap never lands
    hi = min(hi, Wo)
    hi = max(hi, lo)
    return lo, hi


@helper
def _fwd_tap(z, x, K, n, m0, nm, oh, ci, ih, c, i, j, lo, hi, off, s):
    """z[n, m0 + q, oh, ow] += K[m0 + q, c, i, j] * x[n, ci, ih, ow s + off] for ow in [lo, hi), q < nm."""
    # Unsigned column indices: with signed ``ow + off`` numba's negative-index
    # wraparound branch blocked SIMD and every tap ran scalar; slicing instead
    # cost ~100 ns of view set-up per tap on 8x8 images (both measured).
    cnt = np.uint64(hi - lo)
    u0 = np.uint64(lo)
    b0 = np.uint64(lo * s + off)
    su = np.uint64(s)
    if nm == BLOCK:
        k0 = K[m0, c, i, j]
        k1 = K[m0 + 1, c, i, j]
        k2 = K[m0 + 2, c, i, j]
        k3 = K[m0 + 3, c, i, j]
        if s == 1:
            for t in range(cnt):
                v = x[n, ci, ih, b0 + t]
                z[n, m0, oh, u0 + t] += k0 * v
                z[n, m0 + 1, oh, u0 + t] += k1 * v
                z[n, m0 + 2, oh, u0 + t] += k2 * v
                z[n, m0 + 3, oh, u0 + t] += k3 * v
        else:
            for t in range(cnt):
                v = x[n, ci, ih, b0 + t * su]
                z[n, m0, oh, u0 + t] += k0 * v
                z[n, m0 + 1, oh, u0 + t] += k1 * v
                z[n, m0 + 2, oh, u0 + t] += k2 * v
                z[n, m0 + 3, oh, u0 + t] += k3 * v
    else:
        for q in range(nm):
            kq = K[m0 + q, c, i, j]
            for t in range(cnt):
                z[n, m0 + q, oh, u0 + t] += kq * x[n, ci, ih, b0 + t * su]


@helper
def _dot_tap(dz, x, n, k, oh, ci, ih, lo, hi, off, s, acc):
    """acc + sum_{ow in [lo, hi)} dz[n, k, oh, ow] * x[n, ci, ih, ow s + off] (vectorised: reassoc is allowed)."""
    cnt = np.uint64(hi - lo)
    u0 = np.uint64(lo)
    b0 = np.uint64(lo * s + off)
    su = np.uint64(s)
    if s == 1:
        for t in range(cnt):
            acc += dz[n, k, oh, u0 + t] * x[n, ci, ih, b0 + t]
    else:
        for t in range(cnt):
            acc += dz[n, k, oh, u0 + t] * x[n, ci, ih, b0 + t * su]
    return acc


@helper
def _data_tap(dx, dz, K, n, c, ih, m0, nm, oh, cl, i, j, lo, hi, off, s):
    """dx[n, c, ih, ow s + off] += sum_{q < nm} K[m0 + q, cl, i, j] * dz[n, m0 + q, oh, ow] for ow in [lo, hi)."""
    cnt = np.uint64(hi - lo)
    u0 = np.uint64(lo)
    b0 = np.uint64(lo * s + off)
    su = np.uint64(s)
    if nm == BLOCK:
        k0 = K[m0, cl, i, j]
        k1 = K[m0 + 1, cl, i, j]
        k2 = K[m0 + 2, cl, i, j]
        k3 = K[m0 + 3, cl, i, j]
        # one read-modify-write of dx per 4 multiply-adds
        if s == 1:
            for t in range(cnt):
                dx[n, c, ih, b0 + t] += (
                    k0 * dz[n, m0, oh, u0 + t] + k1 * dz[n, m0 + 1, oh, u0 + t]
                    + k2 * dz[n, m0 + 2, oh, u0 + t] + k3 * dz[n, m0 + 3, oh, u0 + t]
                )
        else:
            for t in range(cnt):
                dx[n, c, ih, b0 + t * su] += (
                    k0 * dz[n, m0, oh, u0 + t] + k1 * dz[n, m0 + 1, oh, u0 + t]
                    + k2 * dz[n, m0 + 2, oh, u0 + t] + k3 * dz[n, m0 + 3, oh, u0 + t]
                )
    else:
        for q in range(nm):
            kq = K[m0 + q, cl, i, j]
            for t in range(cnt):
                dx[n, c, ih, b0 + t * su] += kq * dz[n, m0 + q, oh, u0 + t]


@kernel
def conv_forward(y: F4, z: F4, x: F4, K: F4, B: F3, dims: ConvDims, code: int):
    """Z_k = B_k + sum_j X_j (star) K_kj,  Y_k = sigma(Z_k)  (cheat sheet), with
    stride, zero padding, dilation and groups::

        z[n, k, oh, ow] = B[k, oh, ow] + sum_{c, i, j} K[k, c, i, j]
                          * x[n, g Cg + c, oh sh + i dh - ph0, ow sw + j dw - pw0]
        y[n, k, oh, ow] = sigma(z[n, k, oh, ow])

    Shapes: y, z (N, M, Ho, Wo) outputs, overwritten (y may be z itself for the
    identity); x (N, C, H, W); K (M, Cg, kh, kw); B (M, 1, 1) tied,
    (M, Ho, Wo) untied or (0, 1, 1) none; dims a ConvDims; code selects sigma.
    """
    N, _C, H, W = x.shape
    M, Cg, kh, kw = K.shape
    Ho = z.shape[2]
    Wo = z.shape[3]
    G = dims.groups
    Mg = M // G
    nblk = (Mg + BLOCK - 1) // BLOCK
    has_bias = B.shape[0] == M
    untied = B.shape[1] * B.shape[2] > 1
    zero = z.dtype.type(0)
    for t in prange(N * G * nblk):
        n = t // (G * nblk)
        g = (t // nblk) % G
        m0 = g * Mg + (t % nblk) * BLOCK
        nm = min(BLOCK, g * Mg + Mg - m0)
        for oh in range(Ho):
            for q in range(nm):
                zr = z[n, m0 + q, oh]
                for ow in range(Wo):
                    if not has_bias:
                        zr[ow] = zero
                    elif untied:
                        zr[ow] = B[m0 + q, oh, ow]
                    else:
                        zr[ow] = B[m0 + q, 0, 0]
            for c in range(Cg):
                ci = g * Cg + c
                for i in range(kh):
                    ih = oh * dims.sh + i * dims.dh - dims.ph0
                    if ih < 0 or ih >= H:
                        continue  # a padding row: contributes 0
                    for j in range(kw):
                        off = j * dims.dw - dims.pw0
                        lo, hi = col_span(off, dims.sw, W, Wo)
                        _fwd_tap(z, x, K, n, m0, nm, oh, ci, ih, c, i, j, lo, hi, off, dims.sw)
            if code != 0:
                for q in range(nm):
                    for ow in range(Wo):
                        y[n, m0 + q, oh, ow] = act(z[n, m0 + q, oh, ow], code)


@kernel
def conv_dz(dz: F1, dy: F1, z: F1, code: int):
    """dL/dZ_k = dL/dY_k (.) sigma'(Z_k) element-wise (cheat sheet), overwriting dz.

    Shapes: dz, dy, z flat (size,).  Run once so the two gradient kernels read
    dL/dZ instead of re-evaluating sigma' once per kernel tap.
    """
    for t in prange(z.shape[0]):
        dz[t] = dy[t] * dz.dtype.type(dact(z[t], code))


@kernel
def conv_backward_kernel(dK: F4, dB: F3, dz: F4, x: F4, dims: ConvDims):
    """dL/dK_kj = X_j (star) dL/dZ_k and dL/dB_k = dL/dZ_k (cheat sheet), accumulated.

    With stride and dilation the cross-correlation of the input with dL/dZ
    steps through the input with the stride and the kernel taps with the
    dilation (the reverse of the forward line ``z[n,k,oh,ow] += K[k,c,i,j] * x[...]``)::

        dK[k, c, i, j] += sum_{n, oh, ow} dz[n, k, oh, ow]
                          * x[n, g Cg + c, oh sh + i dh - ph0, ow sw + j dw - pw0]
        dB[k, 0, 0]    += sum_{n, oh, ow} dz[n, k, oh, ow]        tied
        dB[k, oh, ow]  += sum_n dz[n, k, oh, ow]                  untied (bias maps)

    Shapes: dK (M, Cg, kh, kw); dB (M, 1, 1), (M, Ho, Wo) or (0, 1, 1);
    dz (N, M, Ho, Wo) = dL/dZ; x (N, C, H, W).  Parallel over k, which owns dK[k]
    and dB[k]; each element is summed in a fixed order (bitwise deterministic).
    """
    N, _C, H, W = x.shape
    M, Cg, kh, kw = dK.shape
    Ho = dz.shape[2]
    Wo = dz.shape[3]
    Mg = M // dims.groups
    has_bias = dB.shape[0] == M
    untied = dB.shape[1] * dB.shape[2] > 1
    for k in prange(M):
        g = k // Mg
        for n in range(N):
            for c in range(Cg):
                ci = g * Cg + c
                for i in range(kh):
                    for j in range(kw):
                        off = j * dims.dw - dims.pw0
                        lo, hi = col_span(off, dims.sw, W, Wo)
                        acc = dK.dtype.type(0)
                        for oh in range(Ho):
                            ih = oh * dims.sh + i * dims.dh - dims.ph0
                            if ih >= 0 and ih < H:
                                acc = _dot_tap(dz, x, n, k, oh, ci, ih, lo, hi, off, dims.sw, acc)
                        dK[k, c, i, j] += acc
            if has_bias:
                if untied:
                    for oh in range(Ho):
                        for ow in range(Wo):
                            dB[k, oh, ow] += dz[n, k, oh, ow]
                else:
                    acc = dB.dtype.type(0)
                    for oh in range(Ho):
                        for ow in range(Wo):
                            acc += dz[n, k, oh, ow]
                    dB[k, 0, 0] += acc


@kernel
def conv_backward_data(dx: F4, dz: F4, K: F4, dims: ConvDims):
    """dL/dX_j = sum_k dL/dZ_k (*) K_kj (cheat sheet), accumulated into dx.

    The full convolution of the stride-dilated upstream gradient with the
    kernel: dL/dZ is spread out by the stride (zeros between its entries), the
    kernel taps are spaced by the dilation, and the result is cropped by the
    padding.  Without materialising any of that, the same sum is the reverse
    of the forward line ``z[n,k,oh,ow] += K[k,c,i,j] * x[n,ci,ih,iw]``::

        dx[n, g Cg + c, oh sh + i dh - ph0, ow sw + j dw - pw0] += K[k, c, i, j] * dz[n, k, oh, ow]

    summed over the output channels k of group g and all (oh, ow, i, j) whose
    input position lies inside x.  Shapes: dx (N, C, H, W); dz (N, M, Ho, Wo);
    K (M, Cg, kh, kw).  Parallel over (n, input channel), the owner of dx[n, c];
    the per-element sum order is fixed (bitwise deterministic).
    """
    N, C, H, W = dx.shape
    M, Cg, kh, kw = K.shape
    Ho = dz.shape[2]
    Wo = dz.shape[3]
    Mg = M // dims.groups
    s = dims.sw
    for t in prange(N * C):
        n = t // C
        c = t % C
        g = c // Cg
        cl = c % Cg
        for m0 in range(g * Mg, g * Mg + Mg, BLOCK):
            nm = min(BLOCK, g * Mg + Mg - m0)
            for oh in range(Ho):
                for i in range(kh):
                    ih = oh * dims.sh + i * dims.dh - dims.ph0
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(kw):
                        off = j * dims.dw - dims.pw0
                        lo, hi = col_span(off, s, W, Wo)
                        _data_tap(dx, dz, K, n, c, ih, m0, nm, oh, cl, i, j, lo, hi, off, s)


# --------------------------------------------------------------------------
# stride-1 fast path: "wide" flattened planes
# --------------------------------------------------------------------------
#
# With stride 1 the cheat sheet's sums read a zero-padded input plane of width
# Wp = W + pw0 + pw1 at a constant offset per tap.  Number output positions in
# that width, p = oh Wp + ow ("wide" positions, ow < Wp; the Wp - Wo columns
# past Wo are computed and thrown away), then the tap (c, i, j) reads
#
#     x[n, c, oh + i dh - ph0, ow + j dw - pw0] = xp[n, c, p + i dh Wp + j dw]
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

#: trip counts are rounded up to a multiple of this (>= vector width x unroll)
ROUND = 32


def wide_geometry(H, W, kh, kw, dims):
    """Sizes of the stride-1 wide layout (plain Python, used by the functional layer).

    Returns (Hp, Wp, Lz, PS, front, Qr, LD):  Hp, Wp the padded input size;
    Lz = round((Ho - 1) Wp + Wo) the output positions computed per plane;
    PS >= Hp Wp + ROUND the padded input plane length (zero slack at its end);
    front = (kh - 1) dh Wp + (kw - 1) dw the largest tap offset; Qr =
    round(Hp Wp) the input positions computed per plane by dL/dX; LD = front +
    Qr the length of a wide dL/dZ plane (zeros in front, in the dropped columns
    and after).
    """
    Hp = H + dims.ph0 + dims.ph1
    Wp = W + dims.pw0 + dims.pw1
    Ho = Hp - (kh - 1) * dims.dh
    Wo = Wp - (kw - 1) * dims.dw
    lz = (Ho - 1) * Wp + Wo
    Lz = (lz + ROUND - 1) // ROUND * ROUND
    front = (kh - 1) * dims.dh * Wp + (kw - 1) * dims.dw
    Qr = (Hp * Wp + ROUND - 1) // ROUND * ROUND
    PS = Hp * Wp + ROUND
    return Hp, Wp, Lz, PS, front, Qr, front + Qr


def pad_wide(x, kh, kw, dims):
    """xp (N, C, PS): x zero-padded to (Hp, Wp), each plane flattened, with ROUND zeros of slack."""
    N, C, H, W = x.shape
    Hp, Wp, _Lz, PS, _f, _Qr, _LD = wide_geometry(H, W, kh, kw, dims)
    xp = np.zeros((N, C, PS), x.dtype)
    xp[:, :, : Hp * Wp].reshape(N, C, Hp, Wp)[:, :, dims.ph0: dims.ph0 + H, dims.pw0: dims.pw0 + W] = x
    return xp


def widen_dz(dz, kh, kw, dims, H, W):
    """dzw (N, M, LD): dL/dZ in wide positions, shifted by ``front``, zeros everywhere else."""
    N, M, Ho, Wo = dz.shape
    Hp, Wp, _Lz, _PS, front, _Qr, LD = wide_geometry(H, W, kh, kw, dims)
    dzw = np.zeros((N, M, LD), dz.dtype)
    dzw[:, :, front: front + Ho * Wp].reshape(N, M, Ho, Wp)[:, :, :, :Wo] = dz
    return dzw


@helper
def _axpy4x4(out, a, r, src, b, s0, s1, s2, s3, u0, u1, u2, u3,
             w00, w01, w02, w03, w10, w11, w12, w13, w20, w21, w22, w23, w30, w31, w32, w33, cnt):
    """out[a, r + q, p] += sum_{t < 4} w_qt src[b, s_t, u_t + p] for q < 4, p < cnt.

    4 output rows x 4 terms: 4 loads of src feed 16 multiply-adds per
    position, one read-modify-write per output row (the dense backward's 4 x 4).
    """
    for p in range(np.uint64(cnt)):
        v0 = src[b, s0, u0 + p]
        v1 = src[b, s1, u1 + p]
        v2 = src[b, s2, u2 + p]
        v3 = src[b, s3, u3 + p]
        out[a, r, p] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
        out[a, r + 1, p] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
        out[a, r + 2, p] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
        out[a, r + 3, p] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3


@helper
def _axpy1x4(out, a, r, src, b, s0, s1, s2, s3, u0, u1, u2, u3, w0, w1, w2, w3, cnt):
    """out[a, r, p] += sum_{t < 4} w_t src[b, s_t, u_t + p] for p < cnt (edge rows)."""
    for p in range(np.uint64(cnt)):
        out[a, r, p] += w0 * src[b, s0, u0 + p] + w1 * src[b, s1, u1 + p] + w2 * src[b, s2, u2 + p] + w3 * src[b, s3, u3 + p]


@helper
def _axpy1x1(out, a, r, src, b, s0, u0, w0, cnt):
    """out[a, r, p] += w0 src[b, s0, u0 + p] for p < cnt (edge terms)."""
    for p in range(np.uint64(cnt)):
        out[a, r, p] += w0 * src[b, s0, u0 + p]


@helper
def _tap(r, kh, kw, dh, dw, Wp):
    """Term r = (c, i, j) of the sum over one group's channels and taps -> (c, i, j, offset i dh Wp + j dw)."""
    c = r // (kh * kw)
    i = (r // kw) % kh
    j = r % kw
    return c, i, j, np.uint64(i * dh * Wp + j * dw)


@helper
def _dot4x3(d, n, m, f, x, ci, u0, u1, u2, cnt):
    """sum_p d[n, m + q, f + p] x[n, ci, u_t + p] for q < 4, t < 3 (12 sums, p < cnt).

    12 accumulators: 7 loads feed 12 multiply-adds per position (the dense
    forward's 4 x 3), vectorised along p (reassoc is allowed).
    """
    a00 = d.dtype.type(0); a01 = a00; a02 = a00  # noqa: E702
    a10 = a00; a11 = a00; a12 = a00  # noqa: E702
    a20 = a00; a21 = a00; a22 = a00  # noqa: E702
    a30 = a00; a31 = a00; a32 = a00  # noqa: E702
    for p in range(np.uint64(cnt)):
        d0 = d[n, m, f + p]
        d1 = d[n, m + 1, f + p]
        d2 = d[n, m + 2, f + p]
        d3 = d[n, m + 3, f + p]
        x0 = x[n, ci, u0 + p]
        x1 = x[n, ci, u1 + p]
        x2 = x[n, ci, u2 + p]
        a00 += d0 * x0; a01 += d0 * x1; a02 += d0 * x2  # noqa: E702
        a10 += d1 * x0; a11 += d1 * x1; a12 += d1 * x2  # noqa: E702
        a20 += d2 * x0; a21 += d2 * x1; a22 += d2 * x2  # noqa: E702
        a30 += d3 * x0; a31 += d3 * x1; a32 += d3 * x2  # noqa: E702
    return a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32


@helper
def _dot1x1(d, n, m, f, x, ci, u0, cnt):
    """sum_p d[n, m, f + p] x[n, ci, u0 + p] for p < cnt (edges)."""
    acc = d.dtype.type(0)
    for p in range(np.uint64(cnt)):
        acc += d[n, m, f + p] * x[n, ci, u0 + p]
    return acc


@kernel
def conv_forward_s1(y: F4, z: F4, xp: F3, K: F4, B: F3, dims: ConvDims, code: int, zw: F3):
    """The forward of :func:`conv_forward` for stride 1, over wide positions p = oh Wp + ow::

        zw[n, k, p] = sum_{c, i, j} K[k, c, i, j] * xp[n, g Cg + c, p + i dh Wp + j dw]
        z[n, k, oh, ow] = B[k, oh, ow] + zw[n, k, oh Wp + ow]        (ow < Wo)
        y[n, k, oh, ow] = sigma(z[n, k, oh, ow])

    i.e. Z_k = B_k + sum_j X_j (star) K_kj with xp the zero-padded input.
    Shapes: y, z (N, M, Ho, Wo) overwritten; xp (N, C, PS) from :func:`pad_wide`;
    K (M, Cg, kh, kw); B as :func:`conv_forward`; zw (N, M, Lz) workspace with
    Lz from :func:`wide_geometry`.  Parallel over (sample, group, block of 4
    output channels), the owner of z[n, k] and zw[n, k]; the sum over the
    Cg kh kw terms runs 4 terms x 4 channels at a time (:func:`_axpy4x4`).
    """
    N = z.shape[0]
    M, Cg, kh, kw = K.shape
    Ho = z.shape[2]
    Wo = z.shape[3]
    Wp = Wo + (kw - 1) * dims.dw
    Lz = zw.shape[2]
    G = dims.groups
    Mg = M // G
    nblk = (Mg + BLOCK - 1) // BLOCK
    has_bias = B.shape[0] == M
    untied = B.shape[1] * B.shape[2] > 1
    zero = z.dtype.type(0)
    R = Cg * kh * kw
    Rb = R - R % 4
    dh = dims.dh
    dw = dims.dw
    for t in prange(N * G * nblk):
        n = t // (G * nblk)
        g = (t // nblk) % G
        m0 = g * Mg + (t % nblk) * BLOCK
        nm = min(BLOCK, g * Mg + Mg - m0)
        cg = g * Cg
        for q in range(nm):
            for p in range(Lz):
                zw[n, m0 + q, p] = zero
        if nm == BLOCK:
            for r in range(0, Rb, 4):
                c0, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                c1, i1, j1, u1 = _tap(r + 1, kh, kw, dh, dw, Wp)
                c2, i2, j2, u2 = _tap(r + 2, kh, kw, dh, dw, Wp)
                c3, i3, j3, u3 = _tap(r + 3, kh, kw, dh, dw, Wp)
                _axpy4x4(zw, n, m0, xp, n, cg + c0, cg + c1, cg + c2, cg + c3, u0, u1, u2, u3,
                         K[m0, c0, i0, j0], K[m0, c1, i1, j1], K[m0, c2, i2, j2], K[m0, c3, i3, j3],
                         K[m0 + 1, c0, i0, j0], K[m0 + 1, c1, i1, j1], K[m0 + 1, c2, i2, j2], K[m0 + 1, c3, i3, j3],
                         K[m0 + 2, c0, i0, j0], K[m0 + 2, c1, i1, j1], K[m0 + 2, c2, i2, j2], K[m0 + 2, c3, i3, j3],
                         K[m0 + 3, c0, i0, j0], K[m0 + 3, c1, i1, j1], K[m0 + 3, c2, i2, j2], K[m0 + 3, c3, i3, j3], Lz)
            for r in range(Rb, R):
                c0, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                for q in range(BLOCK):
                    _axpy1x1(zw, n, m0 + q, xp, n, cg + c0, u0, K[m0 + q, c0, i0, j0], Lz)
        else:
            for q in range(nm):
                m = m0 + q
                for r in range(0, Rb, 4):
                    c0, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                    c1, i1, j1, u1 = _tap(r + 1, kh, kw, dh, dw, Wp)
                    c2, i2, j2, u2 = _tap(r + 2, kh, kw, dh, dw, Wp)
                    c3, i3, j3, u3 = _tap(r + 3, kh, kw, dh, dw, Wp)
                    _axpy1x4(zw, n, m, xp, n, cg + c0, cg + c1, cg + c2, cg + c3, u0, u1, u2, u3,
                             K[m, c0, i0, j0], K[m, c1, i1, j1], K[m, c2, i2, j2], K[m, c3, i3, j3], Lz)
                for r in range(Rb, R):
                    c0, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                    _axpy1x1(zw, n, m, xp, n, cg + c0, u0, K[m, c0, i0, j0], Lz)
        for q in range(nm):
            m = m0 + q
            for oh in range(Ho):
                for ow in range(Wo):
                    v = zw[n, m, oh * Wp + ow]
                    if has_bias:
                        v = (B[m, oh, ow] if untied else B[m, 0, 0]) + v
                    z[n, m, oh, ow] = v
            if code != 0:
                for oh in range(Ho):
                    for ow in range(Wo):
                        y[n, m, oh, ow] = act(z[n, m, oh, ow], code)


@kernel
def conv_backward_kernel_s1(dK: F4, dB: F3, dz: F4, dzw: F3, xp: F3, dims: ConvDims):
    """dL/dK_kj = X_j (star) dL/dZ_k, dL/dB_k = dL/dZ_k for stride 1, accumulated, over wide positions::

        dK[k, c, i, j] += sum_{n, p} dzw[n, k, front + p] * xp[n, g Cg + c, p + i dh Wp + j dw]
        dB as :func:`conv_backward_kernel`

    (dzw is dL/dZ at p = oh Wp + ow, zero in the dropped columns ow >= Wo.)
    Shapes: dK (M, Cg, kh, kw); dB (M, 1, 1), (M, Ho, Wo) or (0, 1, 1); dz
    (N, M, Ho, Wo); dzw (N, M, LD) from :func:`widen_dz`; xp (N, C, PS) from
    :func:`pad_wide`.  Parallel over blocks of 4 output channels k, the owners
    of dK[k] and dB[k]; 4 channels x 3 taps per pass (:func:`_dot4x3`).
    """
    N, M, Ho, Wo = dz.shape
    _M, Cg, kh, kw = dK.shape
    Wp = Wo + (kw - 1) * dims.dw
    front = (kh - 1) * dims.dh * Wp + (kw - 1) * dims.dw
    Lz = ((Ho - 1) * Wp + Wo + ROUND - 1) // ROUND * ROUND
    fu = np.uint64(front)
    G = dims.groups
    Mg = M // G
    nblk = (Mg + BLOCK - 1) // BLOCK
    has_bias = dB.shape[0] == M
    untied = dB.shape[1] * dB.shape[2] > 1
    T = kh * kw
    Tb = T - T % 3
    dh = dims.dh
    dw = dims.dw
    for t in prange(G * nblk):
        g = t // nblk
        m0 = g * Mg + (t % nblk) * BLOCK
        nm = min(BLOCK, g * Mg + Mg - m0)
        for n in range(N):
            for c in range(Cg):
                ci = g * Cg + c
                if nm == BLOCK:
                    for r in range(0, Tb, 3):
                        _c, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                        _c, i1, j1, u1 = _tap(r + 1, kh, kw, dh, dw, Wp)
                        _c, i2, j2, u2 = _tap(r + 2, kh, kw, dh, dw, Wp)
                        a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32 = _dot4x3(
                            dzw, n, m0, fu, xp, ci, u0, u1, u2, Lz)
                        dK[m0, c, i0, j0] += a00; dK[m0, c, i1, j1] += a01; dK[m0, c, i2, j2] += a02  # noqa: E702
                        dK[m0 + 1, c, i0, j0] += a10; dK[m0 + 1, c, i1, j1] += a11; dK[m0 + 1, c, i2, j2] += a12  # noqa: E702
                        dK[m0 + 2, c, i0, j0] += a20; dK[m0 + 2, c, i1, j1] += a21; dK[m0 + 2, c, i2, j2] += a22  # noqa: E702
                        dK[m0 + 3, c, i0, j0] += a30; dK[m0 + 3, c, i1, j1] += a31; dK[m0 + 3, c, i2, j2] += a32  # noqa: E702
                    for r in range(Tb, T):
                        _c, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                        for q in range(BLOCK):
                            dK[m0 + q, c, i0, j0] += _dot1x1(dzw, n, m0 + q, fu, xp, ci, u0, Lz)
                else:
                    for q in range(nm):
                        for r in range(T):
                            _c, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                            dK[m0 + q, c, i0, j0] += _dot1x1(dzw, n, m0 + q, fu, xp, ci, u0, Lz)
            if has_bias:
                for k in range(m0, m0 + nm):
                    if untied:
                        for oh in range(Ho):
                            for ow in range(Wo):
                                dB[k, oh, ow] += dz[n, k, oh, ow]
                    else:
                        acc = dB.dtype.type(0)
                        for oh in range(Ho):
                            for ow in range(Wo):
                                acc += dz[n, k, oh, ow]
                        dB[k, 0, 0] += acc


@kernel
def conv_backward_data_s1(dx: F4, dzw: F3, K: F4, dims: ConvDims, dxw: F3):
    """dL/dX_j = sum_k dL/dZ_k (*) K_kj for stride 1, accumulated into dx, over wide positions::

        dxw[n, c, q] = sum_{k, i, j} K[k, c, i, j] * dzw[n, k, front + q - i dh Wp - j dw]
        dx[n, c, ih, iw] += dxw[n, c, (ih + ph0) Wp + iw + pw0]

    (the full convolution: dzw is dL/dZ at wide positions, zero outside, so the
    sum runs over exactly the (k, i, j, oh, ow) of the forward that read x[n, c, ih, iw]).
    Shapes: dx (N, C, H, W); dzw (N, M, LD) from :func:`widen_dz`; K (M, Cg,
    kh, kw); dxw (N, C, Qr) workspace.  Parallel over (sample, group, block of
    4 input channels), the owner of dx[n, c] and dxw[n, c]; 4 terms x 4 input
    channels per pass (:func:`_axpy4x4`).
    """
    N, C, H, W = dx.shape
    M, Cg, kh, kw = K.shape
    Wp = W + dims.pw0 + dims.pw1
    front = (kh - 1) * dims.dh * Wp + (kw - 1) * dims.dw
    fu = np.uint64(front)
    Qr = dxw.shape[2]
    G = dims.groups
    Mg = M // G
    cblk = (Cg + BLOCK - 1) // BLOCK
    zero = dx.dtype.type(0)
    R = Mg * kh * kw
    Rb = R - R % 4
    dh = dims.dh
    dw = dims.dw
    for t in prange(N * G * cblk):
        n = t // (G * cblk)
        g = (t // cblk) % G
        l0 = (t % cblk) * BLOCK  # first input channel of the block, within the group
        nc = min(BLOCK, Cg - l0)
        c0 = g * Cg + l0
        mg = g * Mg
        for q in range(nc):
            for p in range(Qr):
                dxw[n, c0 + q, p] = zero
        if nc == BLOCK:
            for r in range(0, Rb, 4):
                k0, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                k1, i1, j1, u1 = _tap(r + 1, kh, kw, dh, dw, Wp)
                k2, i2, j2, u2 = _tap(r + 2, kh, kw, dh, dw, Wp)
                k3, i3, j3, u3 = _tap(r + 3, kh, kw, dh, dw, Wp)
                k0 += mg; k1 += mg; k2 += mg; k3 += mg  # noqa: E702
                _axpy4x4(dxw, n, c0, dzw, n, k0, k1, k2, k3, fu - u0, fu - u1, fu - u2, fu - u3,
                         K[k0, l0, i0, j0], K[k1, l0, i1, j1], K[k2, l0, i2, j2], K[k3, l0, i3, j3],
                         K[k0, l0 + 1, i0, j0], K[k1, l0 + 1, i1, j1], K[k2, l0 + 1, i2, j2], K[k3, l0 + 1, i3, j3],
                         K[k0, l0 + 2, i0, j0], K[k1, l0 + 2, i1, j1], K[k2, l0 + 2, i2, j2], K[k3, l0 + 2, i3, j3],
                         K[k0, l0 + 3, i0, j0], K[k1, l0 + 3, i1, j1], K[k2, l0 + 3, i2, j2], K[k3, l0 + 3, i3, j3], Qr)
            for r in range(Rb, R):
                k0, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                for q in range(BLOCK):
                    _axpy1x1(dxw, n, c0 + q, dzw, n, mg + k0, fu - u0, K[mg + k0, l0 + q, i0, j0], Qr)
        else:
            for q in range(nc):
                lq = l0 + q
                for r in range(0, Rb, 4):
                    k0, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                    k1, i1, j1, u1 = _tap(r + 1, kh, kw, dh, dw, Wp)
                    k2, i2, j2, u2 = _tap(r + 2, kh, kw, dh, dw, Wp)
                    k3, i3, j3, u3 = _tap(r + 3, kh, kw, dh, dw, Wp)
                    k0 += mg; k1 += mg; k2 += mg; k3 += mg  # noqa: E702
                    _axpy1x4(dxw, n, c0 + q, dzw, n, k0, k1, k2, k3, fu - u0, fu - u1, fu - u2, fu - u3,
                             K[k0, lq, i0, j0], K[k1, lq, i1, j1], K[k2, lq, i2, j2], K[k3, lq, i3, j3], Qr)
                for r in range(Rb, R):
                    k0, i0, j0, u0 = _tap(r, kh, kw, dh, dw, Wp)
                    _axpy1x1(dxw, n, c0 + q, dzw, n, mg + k0, fu - u0, K[mg + k0, lq, i0, j0], Qr)
        for q in range(nc):
            c = c0 + q
            for ih in range(H):
                b = (ih + dims.ph0) * Wp + dims.pw0
                for iw in range(W):
                    dx[n, c, ih, iw] += dxw[n, c, b + iw]
