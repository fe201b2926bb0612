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

No padded copy of the input is made: every loop clips its output-column range
to the columns that read inside the input (:func:`col_span`) and skips input
rows outside it, so padding costs nothing and nothing is allocated here.

Race freedom (bitwise identical results at any thread count):

* forward: parallel over (sample, group, block of 4 output channels); each
  iteration owns the output rows it writes;
* dK, dB: parallel over output channels k (the owner of dK[k] and dB[k]);
* dX: parallel over (sample, input channel) (the owner of dx[n, c]).
"""

from typing import NamedTuple

import numpy as np
from numba import prange

from .._jit import helper, kernel
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
def conv_forward(y, z, x, K, B, dims, code):
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
def conv_dz(dz, dy, z, code):
    """dL/dZ_k = dL/dY_k (.) sigma'(Z_k) element-wise (cheat sheet), overwriting dz.

    Shapes: dz, dy, z flat (size,).  Run once so the two gradient kernels read
    dL/dZ instead of re-evaluating sigma' once per kernel tap.
    """
    for t in prange(z.shape[0]):
        dz[t] = dy[t] * dz.dtype.type(dact(z[t], code))


@kernel
def conv_backward_kernel(dK, dB, dz, x, dims):
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
def conv_backward_data(dx, dz, K, dims):
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
