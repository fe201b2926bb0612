"""Convolution as products on the product core (im2col): the path of strides other than 1.

The same sums as :mod:`fastgrad.kernels.conv` (its docstring has the cheat
sheet's equations and the index form with stride, padding, dilation and
groups).  Unrolling the input into a matrix of columns makes each of them
one matrix product per group g, which the product core computes::

    cols[(c kh + ki) kw + kj, n P + oh Wo + ow] = x[n, c, oh sh + ki dil_h - ph0, ow sw + kj dil_w - pw0]
                                                  (0 outside x; P = Ho Wo, one column per output position)
    Z_g      = K_g cols_g               (Mg, NP)  = (Mg, Cg kh kw) (Cg kh kw, NP)
    dL/dK_g += dL/dZ_g cols_g^T         (Mg, Cg kh kw) = (Mg, NP) (NP, Cg kh kw)
    dcols_g  = K_g^T dL/dZ_g            (Cg kh kw, NP) = (Cg kh kw, Mg) (Mg, NP)
    dL/dX[n, c, ih, iw] += dcols[(c kh + ki) kw + kj, n P + oh Wo + ow]   (col2im: every
                                                  (ki, kj, oh, ow) whose forward read x[n, c, ih, iw])

where K_g is K's rows of group g flattened to (Mg, Cg kh kw), and dL/dZ_g is
dL/dZ of the group's channels laid out as (Mg, N P) (``dzt``: dL/dZ is
(N, M, Ho, Wo), so the batch axis is moved inside the rows first).  The
general kernels of kernels.conv compute the same sums directly; they are the
plain index-form twin these kernels are tested against.

Why this path exists: the general kernels run one output row of one tap at a
time with a strided input read, at about 1 GFLOP/s.  Measured (AMD EPYC Zen 3,
2 threads, float32, forward + backward through fastgrad.functional, median of 5
interleaved rounds): stride 2, (N, C, H, M, k) = (32, 16, 32, 32, 3) took 101 ms
against PyTorch's 6.2 ms; (16, 64, 28, 64, 3) 308 ms against 12.5 ms.  The
figures after are in the commit that added this module and in functional.conv
(the choice of path).

Few output channels per group (depthwise convolution: one) leave the product
core's register tiles mostly empty, and its launches run group after group
(3 per group in the forward).  With ``products.NO_PRODUCT`` plans the kernels
run the same sums row by row instead (``_weighted_rows``), every group in one
launch: row k of Z is row k of K times cols_g; dL/dK[k, r] is a dot product of
row k of dL/dZ with row g R + r of cols; row g R + r of dcols is column r of
K_g times dL/dZ_g.  functional.conv picks this form for groups of at most
FEW_CHANNELS output channels (the measurements are there).

Memory: cols holds one value per (input channel, tap, sample, output position)
(C kh kw N Ho Wo values: kh kw times x's size when Ho Wo = H W); the forward
keeps it for the backward's dL/dK.

Race freedom and determinism: im2col and col2im are parallel over the planes
(n, c) (the owner of cols' and dx's values of that plane); the z pass and the
dL/dZ transpose over (n, m) and m (the owners of z[n, m] and of dzt's row m
and dB[m]); the products are the core's (tasks own blocks of C, sums in a
fixed order), so results are bitwise the same at any thread count.
"""

from typing import NamedTuple

import numpy as np
from numba import prange

from .._jit import CORE_SERIAL_BELOW, F1, F2, F3, F4, helper, kernel
from .activations import act_row
from .conv import ConvGeometry, bias_grad, row_tap
from .products import ACCUMULATE, OVERWRITE, GemmPlan, Operand, Packed, gemm_task, pack_count, pack_item, pack_pair_item, task_count
from .simd import sload, sstore


class Im2colGrads(NamedTuple):
    """What conv_backward_im2col accumulates into: dx (N, C, H, W), or (0, 1, 1, 1) for no dL/dX;
    dK2 (M, Cg kh kw) the flattened dK; dB (M, 1, 1) tied, (M, Ho, Wo) untied or (0, 1, 1) none."""

    dx: F4
    dK2: F2
    dB: F3


class Im2colBuffers(NamedTuple):
    """The path's workspaces: cols (C kh kw N Ho Wo,) the columns of x, written by the forward and
    read by dL/dK; zt (M N Ho Wo,) the forward's product, then dL/dZ as (M, N Ho Wo) in the backward;
    dcols (C kh kw N Ho Wo,) the columns of dL/dX (size 0 without dL/dX; the forward does not read it)."""

    cols: F1
    zt: F1
    dcols: F1


@helper
def _im2col_plane(cols, xf, geo, n, ci):
    """cols[(ci kh + ki) kw + kj, n P + oh Wo + ow] = x[n, ci, oh sh + ki dil_h - ph0, ow sw + kj dil_w - pw0]
    for every tap (ki, kj) and output position (oh, ow); 0 where the input position is padding."""
    P = geo.Ho * geo.Wo
    NP = geo.N * P
    zero = cols.dtype.type(0)
    xb = (n * geo.C + ci) * geo.H * geo.W
    g = ci // geo.Cg
    c = ci % geo.Cg
    for ki in range(geo.kh):
        for kj in range(geo.kw):
            row = (ci * geo.kh + ki) * geo.kw + kj
            # output row oh reads input row tap.ih + oh sh; the column span does not depend on oh
            # (computed per row, its two integer divisions made im2col + col2im ~15 % slower, Zen 5)
            tap = row_tap(geo, 0, g, c, ki, kj)
            # tap.lo may lie past Wo (tap left of x for every column): zero-filling [0, lo)
            # unclamped wrote into the next row (W = 1, dilation 3, padding 3: found by the fuzz test)
            lo_x = min(tap.lo, geo.Wo)
            hi_x = min(tap.hi, geo.Wo)
            for oh in range(geo.Ho):
                ih = tap.ih + oh * geo.sh
                d = row * NP + n * P + oh * geo.Wo
                lo = lo_x
                hi = hi_x
                if ih < 0 or ih >= geo.H:  # a padding row: the whole output row reads 0
                    lo = geo.Wo
                    hi = geo.Wo
                s = xb + ih * geo.W + tap.off
                for ow in range(lo):
                    sstore(cols, d + ow, zero)
                for ow in range(lo, hi):
                    sstore(cols, d + ow, sload(xf, s + ow * geo.sw))
                for ow in range(hi, geo.Wo):
                    sstore(cols, d + ow, zero)


@helper
def _col2im_plane(dxf, dcols, geo, n, ci):
    """dx[n, ci, oh sh + ki dil_h - ph0, ow sw + kj dil_w - pw0] += dcols[(ci kh + ki) kw + kj, n P + oh Wo + ow]
    for every tap (ki, kj) and output position (oh, ow) that read inside x (in that order: a fixed sum)."""
    P = geo.Ho * geo.Wo
    NP = geo.N * P
    xb = (n * geo.C + ci) * geo.H * geo.W
    g = ci // geo.Cg
    c = ci % geo.Cg
    for ki in range(geo.kh):
        for kj in range(geo.kw):
            row = (ci * geo.kh + ki) * geo.kw + kj
            tap = row_tap(geo, 0, g, c, ki, kj)  # row oh: input row tap.ih + oh sh, the same column span
            for oh in range(geo.Ho):
                ih = tap.ih + oh * geo.sh
                if ih >= 0 and ih < geo.H:
                    d = row * NP + n * P + oh * geo.Wo
                    s = xb + ih * geo.W + tap.off
                    for ow in range(tap.lo, tap.hi):
                        i = s + ow * geo.sw
                        sstore(dxf, i, sload(dxf, i) + sload(dcols, d + ow))


@helper
def _weighted_rows(out, d, w, w0, ws, src, s0, count, NP):
    """out[d + q] = sum_i w[w0 + i ws] src[s0 + i NP + q] for q < NP, summed in the order i = 0, 1, ...

    The row-by-row form of a product with few rows: Z_g's row m is K_g's row m times cols_g
    (i over the R = Cg kh kw taps), dcols_g's row r is column r of K_g times dL/dZ_g (i over Mg).
    """
    zero = out.dtype.type(0)
    for q in range(NP):
        sstore(out, d + q, zero)
    for i in range(count):
        wi = sload(w, w0 + i * ws)
        s = s0 + i * NP
        for q in range(NP):
            sstore(out, d + q, sload(out, d + q) + wi * sload(src, s + q))


@kernel(serial_below=CORE_SERIAL_BELOW)
def conv_forward_im2col(y: F4, z: F4, x: F4, K2: F2, B: F3, geo: ConvGeometry, code: int, bufs: Im2colBuffers,
                        packed: Packed, plan: GemmPlan):
    """Z_k = B_k + sum_j X_j (star) K_kj, Y_k = sigma(Z_k) as Z_g = K_g cols_g per group g::

        cols[(c kh + ki) kw + kj, n P + oh Wo + ow] = x[n, c, oh sh + ki dil_h - ph0, ow sw + kj dil_w - pw0]
        zt[g Mg + m, q]  = sum_r K[g Mg + m, r] cols[g Cg kh kw + r, q]      (r = (c kh + ki) kw + kj)
        z[n, k, oh, ow]  = B[k, oh, ow] + zt[k, n P + oh Wo + ow],   y = sigma(z)

    Shapes: y, z (N, M, Ho, Wo) overwritten; x (N, C, H, W); K2 (M, Cg kh kw)
    the flattened K; B as kernels.conv.conv_forward; bufs.cols written here
    (the backward reads it), bufs.zt the product's output (:class:`Im2colBuffers`); packed /
    plan: the product of one group (``products.gemm_plan(Mg, N Ho Wo, Cg kh kw)``),
    its buffers reused group after group; ``products.NO_PRODUCT``: row by row, all groups
    in one launch (the module docstring).
    """
    P = geo.Ho * geo.Wo
    NP = geo.N * P
    R = geo.Cg * geo.kh * geo.kw
    M = geo.M
    # bundled arrays as local names before any prange (numba issue 5872)
    cols = bufs.cols
    zt = bufs.zt
    xf = x.reshape(-1)
    zf = z.reshape(-1)
    Kf = K2.reshape(-1)
    Bf = B.reshape(-1)
    none = Bf[:0]
    for it in prange(geo.N * geo.C):
        t = np.int64(it)
        _im2col_plane(cols, xf, geo, t // geo.C, t % geo.C)
    if task_count(plan) == 0:  # few channels per group (depthwise): row by row, all groups in one launch
        for it in prange(M):
            k = np.int64(it)
            _weighted_rows(zt, k * NP, Kf, k * R, 1, cols, (k // geo.Mg) * R * NP, R, NP)
    else:
        for g in range(geo.groups):
            a = Operand(Kf[g * geo.Mg * R:], R, 1)  # A[m, r] = K[g Mg + m, r]
            b = Operand(cols[g * R * NP:], NP, 1)  # B[r, q] = cols[g R + r, q]
            zg = zt[g * geo.Mg * NP:]
            for it in prange(pack_count(packed, plan)):
                pack_item(np.int64(it), a, b, packed, plan)
            for it in prange(task_count(plan)):
                gemm_task(np.int64(it), zg, NP, none, OVERWRITE, packed, plan)
    has_bias = B.shape[0] == M
    untied = B.shape[1] * B.shape[2] > 1
    for it in prange(geo.N * M):
        t = np.int64(it)
        n = t // M
        m = t % M
        src = m * NP + n * P
        # B[m, oh, ow] untied, B[m] tied (a step of 0): one loop for both, unswitched on has_bias
        b0 = m * P if untied else m
        bstep = 1 if untied else 0
        for p in range(P):
            v = sload(zt, src + p)
            if has_bias:
                v += sload(Bf, b0 + p * bstep)
            sstore(zf, t * P + p, v)
        if code != 0:
            for oh in range(geo.Ho):
                act_row(y[n, m, oh], z[n, m, oh], code)


@kernel(serial_below=CORE_SERIAL_BELOW)
def conv_backward_im2col(grads: Im2colGrads, dz: F4, K2: F2, geo: ConvGeometry, bufs: Im2colBuffers,
                         p_dk: Packed, p_dx: Packed, plan_dk: GemmPlan, plan_dx: GemmPlan):
    """Accumulate dL/dK, dL/dB and dL/dX (``+=``) of :func:`conv_forward_im2col` per group g::

        dzt[k, n P + oh Wo + ow] = dz[n, k, oh, ow]                       (dL/dZ as (M, N P))
        dK[g Mg + m, r]  += sum_q dzt[g Mg + m, q] cols[g R + r, q]        (dL/dK_g += dL/dZ_g cols_g^T)
        dB as kernels.conv.conv_backward_filter
        dcols[g R + r, q] = sum_m K[g Mg + m, r] dzt[g Mg + m, q]          (dcols_g = K_g^T dL/dZ_g)
        dx[n, c, ih, iw] += dcols[(c kh + ki) kw + kj, n P + oh Wo + ow]   (col2im)

    Shapes: grads (:class:`Im2colGrads`; R = Cg kh kw); dz (N, M, Ho, Wo);
    K2 (M, R); bufs.cols the forward's columns, bufs.zt holds dzt here, bufs.dcols
    (:class:`Im2colBuffers`); p_dk, plan_dk: ``gemm_plan(Mg, R, N Ho Wo)``;
    p_dx, plan_dx: ``gemm_plan(R, N Ho Wo, Mg)`` (``products.NO_PRODUCT`` without
    dL/dX).  plan_dk ``NO_PRODUCT``: dL/dK and dcols row by row (module docstring),
    dcols only when dx is not empty.  One launch packs both products' panels; the dL/dK tasks and the
    dcols tasks then run in a launch each (mixed, each thread would stream a
    different packed operand: see products).
    """
    P = geo.Ho * geo.Wo
    NP = geo.N * P
    R = geo.Cg * geo.kh * geo.kw
    Mg = geo.Mg
    # bundled arrays as local names before any prange (numba issue 5872)
    dx = grads.dx
    dB = grads.dB
    dKf = grads.dK2.reshape(-1)
    cols = bufs.cols
    dzt = bufs.zt
    dcols = bufs.dcols
    dzf = dz.reshape(-1)
    Kf = K2.reshape(-1)
    dxf = dx.reshape(-1)
    none = dKf[:0]
    rows = task_count(plan_dk) == 0  # few channels per group: row by row, as conv_forward_im2col
    for it in prange(geo.M):
        k = np.int64(it)
        for n in range(geo.N):
            src = (n * geo.M + k) * P
            dst = k * NP + n * P
            for p in range(P):
                sstore(dzt, dst + p, sload(dzf, src + p))
            bias_grad(dB, dz, n, k)
        if rows:  # dK[k, r] += sum_q dzt[k, q] cols[g R + r, q]: row k of dzt is complete here
            s0 = (k // Mg) * R * NP
            for r in range(R):
                acc = dKf.dtype.type(0)
                for q in range(NP):
                    acc += sload(dzt, k * NP + q) * sload(cols, s0 + r * NP + q)
                sstore(dKf, k * R + r, sload(dKf, k * R + r) + acc)
    if rows and dx.shape[0] > 0:  # dcols[g R + r, q] = sum_m K[g Mg + m, r] dzt[g Mg + m, q]
        for it in prange(geo.C * geo.kh * geo.kw):
            j = np.int64(it)
            g = j // R
            _weighted_rows(dcols, j * NP, Kf, g * Mg * R + j % R, R, dzt, g * Mg * NP, Mg, NP)
    if not rows:
        for g in range(geo.groups):
            a_dk = Operand(dzt[g * Mg * NP:], NP, 1)  # A[m, q] = dzt[g Mg + m, q]
            b_dk = Operand(cols[g * R * NP:], 1, NP)  # B[q, r] = cols[g R + r, q]: cols_g^T read in place
            a_dx = Operand(Kf[g * Mg * R:], 1, R)  # A[r, m] = K[g Mg + m, r]: K_g^T read in place
            b_dx = Operand(dzt[g * Mg * NP:], NP, 1)  # B[m, q] = dzt[g Mg + m, q]
            n_dk = pack_count(p_dk, plan_dk)
            for it in prange(n_dk + pack_count(p_dx, plan_dx)):
                pack_pair_item(np.int64(it), n_dk, a_dk, b_dk, p_dk, plan_dk, a_dx, b_dx, p_dx, plan_dx)
            dKg = dKf[g * Mg * R:]
            for it in prange(task_count(plan_dk)):
                gemm_task(np.int64(it), dKg, R, none, ACCUMULATE, p_dk, plan_dk)
            dcg = dcols[g * R * NP:]
            for it in prange(task_count(plan_dx)):
                gemm_task(np.int64(it), dcg, NP, none, OVERWRITE, p_dx, plan_dx)
    if dx.shape[0] > 0:
        for it in prange(geo.N * geo.C):
            t = np.int64(it)
            _col2im_plane(dxf, dcols, geo, t // geo.C, t % geo.C)
