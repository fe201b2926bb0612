"""LSTM: the cheat sheet's third section, over a batch of N sequences of length T.

Forward, one step t of one sequence (gates in the order f, i, o, n)::

    f_t = sigma_f(W_f . [h_{t-1}, x_t] + b_f)        W (4, H, H+I), b (4, H)
    i_t = sigma_i(W_i . [h_{t-1}, x_t] + b_i)        x (T, N, I)
    o_t = sigma_o(W_o . [h_{t-1}, x_t] + b_o)        h, c (N, H) per step
    n_t = sigma_n(W_c . [h_{t-1}, x_t] + b_c)
    c_t = f_t * c_{t-1} + i_t * n_t
    h_t = o_t * sigma_h(c_t)

Backward through time (BPTT), the cheat sheet's lines completed::

    dL/dc_t = dL/dh_t * sigma_h'(c_t) * o_t + dL/dc_{t+1} * f_{t+1}
    dL/df_t = dL/dc_t * c_{t-1}        dL/di_t = dL/dc_t * n_t
    dL/do_t = dL/dh_t * sigma_h(c_t)   dL/dn_t = dL/dc_t * i_t
    dL/dz_g = dL/dg_t * sigma_g'(z_g)  for each gate g (z_g its pre-activation)
    then the dense rule on [h_{t-1}, x_t] for every gate:
    dL/dW_g[k, j] += dL/dz_g[k] * [h_{t-1}, x_t][j]     dL/db_g[k] += dL/dz_g[k]
    dL/dh_{t-1}[j] = sum_{g in f,i,o,n} sum_k dL/dz_g[k] * W_g[k, j]        (j <  H)
    dL/dx_t[j]     = sum_{g in f,i,o,n} sum_k dL/dz_g[k] * W_g[k, H + j]    (j <  I)

dL/dh_t is the upstream gradient on the output h_t plus dL/dh_t flowing back
from step t+1 (the last line above); the sum over g runs over all four gates.

Parallel layout (race-free, bitwise identical at any thread count).  Every
matrix product is a set of dot products over a contiguous index (the shared
``kernels.products``); the gate and unit are merged, gk = g H + k.

* input projection ``b + W[:, :, H:] . x_t`` for every (t, n) before the time
  loop: one big product (``products.dot_rows``), parallel over chunks of rows
  (t, n) that own the outputs;
* the recurrence: time is serial inside each sequence, sequences are
  independent, so the loop is parallel over blocks of 4 sequences with the
  whole time loop inside (one parallel launch per call, not one per step);
  each load of a W row feeds the 4 sequences of the block (``products.dot4x2``);
* backward: dL/dh_{t-1} = dz . W^T uses WT (H+I, 4H), a transposed copy of W
  made by the forward; dx after the recurrence, parallel over chunks of rows
  (t, n); dW, db over the valid rows only, with dz and [h, x] transposed
  (dzT (4H, V), hxT (H+I, V)) and multiplied by ``products.dot_rows``,
  parallel over the chunks of rows gk that own them, each sum over (t, n) in
  a fixed order.

Measured (single-thread CPU time, forward + backward, vs. the per-sample loops
this replaced): (T, N, I, H) = (50, 32, 32, 64) 19 -> 8.5 ms f32, 30 -> 18 ms
f64; (100, 16, 128, 128) 73 -> 36 ms f32, 156 -> 61 ms f64.

``lengths[n]`` (1 <= lengths[n] <= T) marks sequence n's real steps; padded
steps t >= lengths[n] output 0, leave the state unchanged and get no gradient.
``codes`` is an int64 array (5,) of activation codes for (f, i, o, n, h).
The kernels take their arrays bundled by role (:class:`LSTMOut`,
:class:`LSTMSaved`, :class:`LSTMParams`, :class:`LSTMGrads`,
:class:`LSTMUpstream`, :class:`LSTMScratch`).
"""

from typing import NamedTuple

from numba import prange

from .._jit import F2, F3, F4, I1, helper, kernel
from .activations import act_row, dact_from_output
from .products import dot1, dot4x1, dot4x2, dot_rows, gather_transpose, tiling, transpose_block

GATE_F, GATE_I, GATE_O, GATE_N = 0, 1, 2, 3
SLOT_H = 4


class LSTMOut(NamedTuple):
    """Outputs of lstm_forward (overwritten): y (T, N, H) every h_t (0 at padded steps); hT, cT (N, H)."""

    y: F3
    hT: F2
    cT: F2


class LSTMSaved(NamedTuple):
    """What lstm_forward saves for lstm_backward (overwritten by the forward).

    hx (T, N, H+I) the rows [h_{t-1}, x_t]; z, a (T, N, 4, H) gate
    pre-activations and activations (f, i, o, n); c (T+1, N, H) cell states,
    c[0] = c0, c[t+1] = c_t; sh (T, N, H) sigma_h(c_t); WT (H+I, 4H) with
    WT[j, g H + k] = W_g[k, j], for the backward's sums over (g, k).
    """

    hx: F3
    z: F4
    a: F4
    c: F3
    sh: F3
    WT: F2


class LSTMParams(NamedTuple):
    """W (4, H, H+I); Wx (4H, I) = W[:, :, H:] as a contiguous copy; b (4, H)."""

    W: F3
    Wx: F2
    b: F2


class LSTMGrads(NamedTuple):
    """Gradients lstm_backward accumulates into (``+=``): dx (T, N, I), dW (4, H, H+I), db (4, H), dh0, dc0 (N, H)."""

    dx: F3
    dW: F3
    db: F2
    dh0: F2
    dc0: F2


class LSTMUpstream(NamedTuple):
    """Upstream gradients: dy (T, N, H) on every h_t, or (0, 0, 0) for none; dhT, dcT (N, H) on the final state."""

    dy: F3
    dhT: F2
    dcT: F2


class LSTMScratch(NamedTuple):
    """Scratch of lstm_backward (overwritten): dz (T, N, 4, H) dL/dz per gate (0 at padded steps);
    dzT (4H, V), hxT (H+I, V) dz and [h, x] of the V valid steps, transposed; rows (V,) int64 the
    indices r = t N + n of those steps in increasing order; dh, dc (N, H) the carries dL/dh_t and
    dL/dc_{t+1} f_{t+1} flowing back through time.
    """

    dz: F4
    dzT: F2
    hxT: F2
    rows: I1
    dh: F2
    dc: F2


@helper
def cell_step(out, saved, t, n, L, codes):
    """Gate activations and the state update of one valid step (t < L) of sequence n."""
    a = saved.a
    c = saved.c
    T = out.y.shape[0]
    H = out.y.shape[2]
    for g in range(4):
        act_row(a[t, n, g], saved.z[t, n, g], codes[g])
    for k in range(H):
        # c_t = f_t * c_{t-1} + i_t * n_t
        c[t + 1, n, k] = a[t, n, GATE_F, k] * c[t, n, k] + a[t, n, GATE_I, k] * a[t, n, GATE_N, k]
    act_row(saved.sh[t, n], c[t + 1, n], codes[SLOT_H])
    for k in range(H):
        # h_t = o_t * sigma_h(c_t)
        ht = a[t, n, GATE_O, k] * saved.sh[t, n, k]
        out.y[t, n, k] = ht
        if t + 1 < T:
            saved.hx[t + 1, n, k] = ht
        if t + 1 == L:
            out.hT[n, k] = ht
            out.cT[n, k] = c[t + 1, n, k]


@helper
def padded_step(out, saved, t, n):
    """Padded step t >= lengths[n]: output 0, state carried unchanged, nothing saved."""
    T = out.y.shape[0]
    H = out.y.shape[2]
    zero = out.y.dtype.type(0)
    for k in range(H):
        out.y[t, n, k] = zero
        saved.sh[t, n, k] = zero
        saved.c[t + 1, n, k] = saved.c[t, n, k]
        if t + 1 < T:
            saved.hx[t + 1, n, k] = zero
    for g in range(4):
        for k in range(H):
            saved.a[t, n, g, k] = zero


@kernel(dynamic=True)  # the projection chunks and the WT chunks of one launch differ in cost
def lstm_forward(out: LSTMOut, saved: LSTMSaved, x: F3, params: LSTMParams, h0: F2, c0: F2, lengths: I1, codes: I1):
    """Forward pass over all T steps, saving what lstm_backward needs.

    Outputs (overwritten): ``out`` (:class:`LSTMOut`) and ``saved``
    (:class:`LSTMSaved`).  Inputs: x (T, N, I); params (:class:`LSTMParams`);
    h0, c0 (N, H); lengths (N,) int64; codes (5,) int64.

    Matrices are viewed with the gate and unit merged, row gk = g H + k:
    W2 (4H, H+I), z2 (T N, 4H), hx2 (T N, H+I), x2 (T N, I).
    """
    # bundled arrays as local names before any prange (numba issue 5872: inside a
    # parallel loop a write through ``bundle.field[...]`` is lost)
    T, N, n_in = x.shape
    H = params.W.shape[1]
    G = 4 * H
    TN = T * N
    hx = saved.hx
    c = saved.c
    WT = saved.WT
    Wx = params.Wx
    W2 = params.W.reshape((G, H + n_in))
    b2 = params.b.reshape(G)
    z2 = saved.z.reshape((TN, G))
    x2 = x.reshape((TN, n_in))
    hx2 = hx.reshape((TN, H + n_in))
    # z_g[k] = b_g[k] + sum_j W_g[k, H + j] x_t[j] for all (t, n) at once: the
    # input half of W . [h_{t-1}, x_t] does not depend on the recurrence.
    # products.dot_rows (4 rows (t, n) x 3 rows gk) with Wx = W[:, :, H:] as its
    # own contiguous (4H, I) array, parallel over chunks of rows (t, n); the same
    # launch makes WT in chunks of 16 rows (one prange less to compile).
    # (dot4x2 on W[:, :, H:] before.)  Forward, 2 threads, dynamic schedule: (100, 16, 128, 128)
    # f32 6.1 -> 5.7 ms, f64 10.4 -> 9.7 ms; (35, 20, 256, 256) f32 9.9 -> 9.1 ms, f64 18.9 -> 15.3 ms.
    KT, CB = tiling(G, n_in * x.itemsize, 3)
    nch = (TN + 4 * CB - 1) // (4 * CB)
    for it in prange(nch + (H + n_in + 15) // 16):
        if it >= nch:
            j0 = 16 * (it - nch)
            transpose_block(WT, W2, j0, min(j0 + 16, H + n_in))
        else:
            r_lo = 4 * CB * it
            r_hi = min(r_lo + 4 * CB, TN)
            for r in range(r_lo, r_hi):
                for j in range(n_in):
                    hx2[r, H + j] = x2[r, j]
            dot_rows(z2, x2, Wx, b2, False, r_lo, r_hi, KT)
    # The recurrence: time serial inside each block of 4 sequences, blocks in
    # parallel (one launch per call).  z_g[k] += sum_j W_g[k, j] h_{t-1}[j] for
    # all four gates of the 4 sequences in one pass over W[:, :, :H].
    for nb in prange((N + 3) // 4):
        n0 = 4 * nb
        n1 = min(n0 + 4, N)
        Lmin = T
        for n in range(n0, n1):
            Lmin = min(Lmin, lengths[n])
            for k in range(H):
                hx[0, n, k] = h0[n, k]
                c[0, n, k] = c0[n, k]
        for t in range(T):
            r0 = t * N + n0
            if n1 - n0 == 4 and t < Lmin:
                for gk in range(0, G, 2):
                    s = dot4x2(hx2[r0], hx2[r0 + 1], hx2[r0 + 2], hx2[r0 + 3], W2[gk], W2[gk + 1], H)
                    z2[r0, gk] += s[0]
                    z2[r0, gk + 1] += s[1]
                    z2[r0 + 1, gk] += s[2]
                    z2[r0 + 1, gk + 1] += s[3]
                    z2[r0 + 2, gk] += s[4]
                    z2[r0 + 2, gk + 1] += s[5]
                    z2[r0 + 3, gk] += s[6]
                    z2[r0 + 3, gk + 1] += s[7]
            else:
                for n in range(n0, n1):
                    if t < lengths[n]:
                        r = t * N + n
                        for gk in range(G):
                            z2[r, gk] += dot1(hx2[r], W2[gk], H)
            for n in range(n0, n1):
                L = lengths[n]
                if t < L:
                    cell_step(out, saved, t, n, L, codes)
                else:
                    padded_step(out, saved, t, n)


@helper
def cell_backward(grads, scratch, upstream, saved, t, n, codes):
    """dL/dz of the four gates of valid step t of sequence n, and the carried dL/dc_{t-1}.

    scratch.dh[n] holds dL/dh_t from step t+1 and scratch.dc[n] holds dL/dc_{t+1} f_{t+1}.
    """
    a = saved.a
    z = saved.z
    dz = scratch.dz
    H = scratch.dh.shape[1]
    has_dy = upstream.dy.shape[0] == dz.shape[0]
    cast = grads.dx.dtype.type  # sigma' is float64 scalar math: back to the array dtype
    for k in range(H):
        dh = scratch.dh[n, k]
        if has_dy:
            dh += upstream.dy[t, n, k]
        gate_f = a[t, n, GATE_F, k]
        gate_i = a[t, n, GATE_I, k]
        gate_o = a[t, n, GATE_O, k]
        gate_n = a[t, n, GATE_N, k]
        s = saved.sh[t, n, k]
        # reverses h_t = o_t * sigma_h(c_t):
        # dL/dc_t = dL/dh_t * sigma_h'(c_t) * o_t + dL/dc_{t+1} * f_{t+1}
        dsh = cast(dact_from_output(saved.c[t + 1, n, k], s, codes[SLOT_H]))
        dc = dh * dsh * gate_o + scratch.dc[n, k]
        # reverses c_t = f_t * c_{t-1} + i_t * n_t and the four gate lines
        d_f = dc * saved.c[t, n, k]
        d_i = dc * gate_n
        d_o = dh * s
        d_n = dc * gate_i
        dz[t, n, GATE_F, k] = d_f * cast(dact_from_output(z[t, n, GATE_F, k], gate_f, codes[GATE_F]))
        dz[t, n, GATE_I, k] = d_i * cast(dact_from_output(z[t, n, GATE_I, k], gate_i, codes[GATE_I]))
        dz[t, n, GATE_O, k] = d_o * cast(dact_from_output(z[t, n, GATE_O, k], gate_o, codes[GATE_O]))
        dz[t, n, GATE_N, k] = d_n * cast(dact_from_output(z[t, n, GATE_N, k], gate_n, codes[GATE_N]))
        # dL/dc_{t-1} = dL/dc_t * f_t
        scratch.dc[n, k] = dc * gate_f


@kernel(dynamic=True)  # the dx blocks and the transposes in one launch differ in cost
def lstm_backward(grads: LSTMGrads, scratch: LSTMScratch, upstream: LSTMUpstream, saved: LSTMSaved, lengths: I1, codes: I1):
    """BPTT: every gradient in ``grads`` accumulated (``+=``); ``scratch`` overwritten.

    grads (:class:`LSTMGrads`): dx (T, N, I), dW (4, H, H+I), db (4, H), dh0,
    dc0 (N, H).  scratch (:class:`LSTMScratch`), allocated by the caller.
    upstream (:class:`LSTMUpstream`).  saved: from lstm_forward; lengths,
    codes as given to it.
    """
    # bundled arrays as local names before any prange (numba issue 5872, see lstm_forward)
    T, N, n_in = grads.dx.shape
    H = grads.dh0.shape[1]
    G = 4 * H
    TN = T * N
    HI = H + n_in
    zero = grads.dx.dtype.type(0)
    dh = scratch.dh
    dc = scratch.dc
    dh0 = grads.dh0
    dc0 = grads.dc0
    dzT = scratch.dzT
    hxT = scratch.hxT
    dhT = upstream.dhT
    dcT = upstream.dcT
    dW2 = grads.dW.reshape((G, HI))
    db2 = grads.db.reshape(G)
    dz2 = scratch.dz.reshape((TN, G))
    dx2 = grads.dx.reshape((TN, n_in))
    hx2 = saved.hx.reshape((TN, HI))
    WT = saved.WT
    # WT[j, gk] = W_g[k, j] (made by the forward): the sums over (g, k) below run over contiguous rows.
    for nb in prange((N + 3) // 4):
        n0 = 4 * nb
        n1 = min(n0 + 4, N)
        Lmin = T
        Lmax = 0
        for n in range(n0, n1):
            L = lengths[n]
            Lmin = min(Lmin, L)
            Lmax = max(Lmax, L)
            for k in range(H):
                dh[n, k] = dhT[n, k]
                dc[n, k] = dcT[n, k]
            for t in range(T - 1, L - 1, -1):
                for gk in range(G):
                    dz2[t * N + n, gk] = zero
        for t in range(Lmax - 1, -1, -1):
            for n in range(n0, n1):
                if t < lengths[n]:
                    cell_backward(grads, scratch, upstream, saved, t, n, codes)
            # reverses z_g = W_g . [h_{t-1}, x_t] + b_g for the h half:
            # dL/dh_{t-1}[j] = sum over ALL FOUR gates g, k of dL/dz_g[k] W_g[k, j]
            # = dz2[r] . WT[j], 4 sequences x 2 columns j per pass
            r0 = t * N + n0
            if n1 - n0 == 4 and t < Lmin:
                for j in range(0, H - 1, 2):
                    s8 = dot4x2(dz2[r0], dz2[r0 + 1], dz2[r0 + 2], dz2[r0 + 3], WT[j], WT[j + 1], G)
                    dh[n0, j] = s8[0]
                    dh[n0, j + 1] = s8[1]
                    dh[n0 + 1, j] = s8[2]
                    dh[n0 + 1, j + 1] = s8[3]
                    dh[n0 + 2, j] = s8[4]
                    dh[n0 + 2, j + 1] = s8[5]
                    dh[n0 + 3, j] = s8[6]
                    dh[n0 + 3, j + 1] = s8[7]
                if H % 2 == 1:
                    s4 = dot4x1(dz2[r0], dz2[r0 + 1], dz2[r0 + 2], dz2[r0 + 3], WT[H - 1], G)
                    for m in range(4):
                        dh[n0 + m, H - 1] = s4[m]
            else:
                for n in range(n0, n1):
                    if t < lengths[n]:
                        for j in range(H):
                            dh[n, j] = dot1(dz2[t * N + n], WT[j], G)
        # the carries are now dL/dh_0 and dL/dc_0 of the block's sequences
        for n in range(n0, n1):
            for k in range(H):
                dh0[n, k] += dh[n, k]
                dc0[n, k] += dc[n, k]
    # After the recurrence, one launch for two independent jobs:
    # * x half: dL/dx_t[j] += sum_{g, k} dL/dz_g[k] W_g[k, H + j], blocks of 4 rows
    #   (t, n) (products.dot_rows on WT[H:] (I, 4H)); dz is 0 at padded steps, so
    #   their rows of dx are left unchanged;
    # * dzT, hxT: dz and [h_{t-1}, x_t] of the V valid rows (t, n), transposed so
    #   the dW sums below run over contiguous rows (16 rows of dzT / hxT per chunk).
    rows = scratch.rows
    V = rows.shape[0]
    KX, CB = tiling(n_in, G * WT.itemsize, 3)
    nrb = (TN + 4 * CB - 1) // (4 * CB)
    nzb = (G + 15) // 16
    for it in prange(nrb + nzb + (HI + 15) // 16):
        if it >= nrb + nzb:
            j0 = 16 * (it - nrb - nzb)
            j1 = min(j0 + 16, HI)
            gather_transpose(hxT[j0:j1], hx2, rows, j0, j1)
        elif it >= nrb:
            j0 = 16 * (it - nrb)
            j1 = min(j0 + 16, G)
            gather_transpose(dzT[j0:j1], dz2, rows, j0, j1)
        else:
            r_lo = 4 * CB * it
            r_hi = min(r_lo + 4 * CB, TN)
            dot_rows(dx2, dz2, WT[H:], db2[:0], True, r_lo, r_hi, KX)
    # dL/dW_g[k, j] += sum_{t, n} dL/dz_g[k] [h_{t-1}, x_t][j] over the V valid
    # rows (t, n) in order: products.dot_rows (4 rows gk x 3 rows j, 7 loads per
    # 12 multiply-adds) over chunks of rows gk, which own dW and db.
    # (dot4x2 here before: 6 loads per 8.)  Backward, 2 threads: (50, 32, 32, 64) f32
    # 2.41 -> 2.06 ms, f64 3.73 -> 3.60 ms; (100, 16, 128, 128) f32 9.10 -> 8.21 ms, f64 16.9 -> 15.3 ms.
    KT, CB = tiling(HI, V * dzT.itemsize, 3)
    nch = (G + 4 * CB - 1) // (4 * CB)
    for ch in prange(nch):
        g_lo = 4 * CB * ch
        g_hi = min(g_lo + 4 * CB, G)
        dot_rows(dW2, dzT, hxT, db2[:0], True, g_lo, g_hi, KT)
        for gk in range(g_lo, g_hi):
            s = zero
            for v in range(V):
                s += dzT[gk, v]
            db2[gk] += s
