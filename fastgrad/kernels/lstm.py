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
matrix product is a set of dot products over a contiguous index (dots4x2:
register tile 4 rows x 2 rows); the gate and unit are merged, gk = g H + k.

* input projection ``b + W[:, :, H:] . x_t`` for every (t, n) before the time
  loop: one big product (the dense layer's blocked ``_rows``), parallel over
  chunks of rows (t, n) that own the outputs;
* the recurrence: time is serial inside each sequence, sequences are
  independent, so the loop is parallel over blocks of 4 sequences with the
  whole time loop inside (one parallel launch per call, not one per step);
  each load of a W row feeds the 4 sequences of the block;
* backward: dL/dh_{t-1} = dz . W^T uses WT (H+I, 4H), a transposed copy of W
  made by the forward; dx after the recurrence, parallel over chunks of rows
  (t, n); dW, db over the valid rows only, with dz and [h, x] transposed
  (dzT (4H, V), hxT (H+I, V)) and multiplied by the dense layer's blocked
  product, parallel over the chunks of rows gk that own them, each sum over
  (t, n) in a fixed order.

Measured (single-thread CPU time, forward + backward, vs. the per-sample loops
this replaced): (T, N, I, H) = (50, 32, 32, 64) 19 -> 8.5 ms f32, 30 -> 18 ms
f64; (100, 16, 128, 128) 73 -> 36 ms f32, 156 -> 61 ms f64.

``lengths[n]`` (1 <= lengths[n] <= T) marks sequence n's real steps; padded
steps t >= lengths[n] output 0, leave the state unchanged and get no gradient.
``codes`` is an int64 array (5,) of activation codes for (f, i, o, n, h).
"""

import math

from numba import prange

from .._jit import F2, F3, F4, I1, helper, kernel
from .activations import act, dact
from .dense import _rows, _tiling, _transpose
from .softmax import _exp

GATE_F, GATE_I, GATE_O, GATE_N = 0, 1, 2, 3
SLOT_H = 4


@helper
def act_row(out, z, code):
    """out[k] = sigma(z[k]) over one row, in the row's dtype.

    The branch on ``code`` sits outside the loop and sigmoid/tanh are computed
    inline: measured 2.4x faster than one ``act`` call per element, which was
    the largest cost of the forward pass at H = 64.  e^t is softmax's
    vectorisable ``_exp`` (<= 1 ulp), so each loop runs 4 (float64) / 8
    (float32) lanes at a time; with libm's scalar exp the float64 activations
    cost about 2 ms of the 3.7 ms forward at (T, N, I, H) = (50, 32, 32, 64).
    1 / (1 + e^-z) is exact in its limits in IEEE arithmetic (e^-z = inf gives 0).
    """
    one = out.dtype.type(1)
    if code == 1:
        for k in range(z.shape[0]):
            out[k] = one / (one + _exp(-z[k]))
    elif code == 2:
        # tanh z = sign(z) (1 - e) / (1 + e), e = e^{-2|z|}: 19 ns per element
        # for libm tanh against 3 ns for the exp form (measured, both dtypes).
        # Absolute error <= 1 ulp of 1; below `tiny` z (1 - z^2/3) avoids the cancellation.
        two = out.dtype.type(2)
        third = out.dtype.type(1.0 / 3.0)
        tiny = out.dtype.type(0.03 if out.itemsize == 4 else 2e-4)
        for k in range(z.shape[0]):
            zk = z[k]
            e = _exp(-two * abs(zk))
            big = math.copysign((one - e) / (one + e), zk)
            out[k] = zk * (one - zk * zk * third) if abs(zk) < tiny else big
    else:
        for k in range(z.shape[0]):
            out[k] = out.dtype.type(act(z[k], code))


@helper
def dact_saved(z, a, code):
    """sigma'(z) reusing the saved activation a = sigma(z) where that is exact.

    sigmoid' = a (1 - a), tanh' = 1 - a^2, identity' = 1: no exp/tanh in the
    backward pass for the default gates (measured: the transcendental calls cost
    as much as the matrix products at H = 64).
    """
    if code == 1:
        return a * (1.0 - a)
    if code == 2:
        return 1.0 - a * a
    if code == 0:
        return 1.0
    return dact(z, code)


@helper
def dot1(u, v, P):
    """sum_p u[p] v[p] over the first P entries of two contiguous rows."""
    s = u.dtype.type(0)
    for p in range(P):
        s += u[p] * v[p]
    return s


@helper
def dots4x1(u0, u1, u2, u3, v, P):
    """The four sums u_i . v: each load of v feeds four multiply-adds."""
    s0 = s1 = s2 = s3 = u0.dtype.type(0)
    for p in range(P):
        w = v[p]
        s0 += u0[p] * w
        s1 += u1[p] * w
        s2 += u2[p] * w
        s3 += u3[p] * w
    return s0, s1, s2, s3


@helper
def dots4x2(u0, u1, u2, u3, v0, v1, P):
    """The eight sums u_i . v_m (i < 4, m < 2) in one pass over the rows.

    Register tile 4x2: six row loads feed eight multiply-adds.  Every matrix
    product of the LSTM is written as such row-by-row dot products over a
    contiguous index (the "NT" form), which LLVM vectorises with one vector
    accumulator per sum.
    """
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = u0.dtype.type(0)
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


@helper
def transpose_rows(dst, src, rows, j0, j1, col0):
    """dst[j - j0, i] = src[rows[i], col0 + j] for j0 <= j < j1 (dst rows owned by the caller).

    Tiled by 16 source rows so both the reads and the writes stay in a few
    cache lines.
    """
    n = rows.shape[0]
    for i0 in range(0, n, 16):
        i1 = min(i0 + 16, n)
        for i in range(i0, i1):
            r = rows[i]
            for j in range(j0, j1):
                dst[j - j0, i] = src[r, col0 + j]


@helper
def cell_step(y, hT, cT, hx, a, c, sh, z, t, n, L, codes):
    """Gate activations and the state update of one valid step (t < L) of sequence n."""
    T = y.shape[0]
    H = y.shape[2]
    for g in range(4):
        act_row(a[t, n, g], z[t, n, g], codes[g])
    for k in range(H):
        # c_t = f_t * c_{t-1} + i_t * n_t
        c[t + 1, n, k] = a[t, n, GATE_F, k] * c[t, n, k] + a[t, n, GATE_I, k] * a[t, n, GATE_N, k]
    act_row(sh[t, n], c[t + 1, n], codes[SLOT_H])
    for k in range(H):
        # h_t = o_t * sigma_h(c_t)
        ht = a[t, n, GATE_O, k] * sh[t, n, k]
        y[t, n, k] = ht
        if t + 1 < T:
            hx[t + 1, n, k] = ht
        if t + 1 == L:
            hT[n, k] = ht
            cT[n, k] = c[t + 1, n, k]


@helper
def padded_step(y, hx, a, c, sh, t, n):
    """Padded step t >= lengths[n]: output 0, state carried unchanged, nothing saved."""
    T = y.shape[0]
    H = y.shape[2]
    zero = y.dtype.type(0)
    for k in range(H):
        y[t, n, k] = zero
        sh[t, n, k] = zero
        c[t + 1, n, k] = c[t, n, k]
        if t + 1 < T:
            hx[t + 1, n, k] = zero
    for g in range(4):
        for k in range(H):
            a[t, n, g, k] = zero


@kernel(dynamic=True)  # the projection chunks and the WT chunks of one launch differ in cost
def lstm_forward(y: F3, hT: F2, cT: F2, hx: F3, z: F4, a: F4, c: F3, sh: F3, WT: F2, x: F3, W: F3, Wx: F2, b: F2,
                 h0: F2, c0: F2, lengths: I1, codes: I1):
    """Forward pass over all T steps, saving what lstm_backward needs.

    Outputs (overwritten):
      y (T, N, H)          h_t for every step (0 at padded steps)
      hT, cT (N, H)        state at each sequence's own last step
    Saved for backward (overwritten):
      hx (T, N, H+I)       the rows [h_{t-1}, x_t]
      z, a (T, N, 4, H)    gate pre-activations and activations (f, i, o, n)
      c (T+1, N, H)        cell states, c[0] = c0, c[t+1] = c_t
      sh (T, N, H)         sigma_h(c_t)
      WT (H+I, 4H)         WT[j, g H + k] = W_g[k, j], for the backward's sums over (g, k)
    Inputs: x (T, N, I); W (4, H, H+I); Wx (4H, I) = W[:, :, H:] as a contiguous
    copy; b (4, H); h0, c0 (N, H); lengths (N,) int64; codes (5,) int64.

    Matrices are viewed with the gate and unit merged, row gk = g H + k:
    W2 (4H, H+I), z2 (T N, 4H), hx2 (T N, H+I), x2 (T N, I).
    """
    T, N, n_in = x.shape
    H = W.shape[1]
    G = 4 * H
    TN = T * N
    W2 = W.reshape((G, H + n_in))
    b2 = b.reshape(G)
    z2 = z.reshape((TN, G))
    x2 = x.reshape((TN, n_in))
    hx2 = hx.reshape((TN, H + n_in))
    # z_g[k] = b_g[k] + sum_j W_g[k, H + j] x_t[j] for all (t, n) at once: the
    # input half of W . [h_{t-1}, x_t] does not depend on the recurrence.
    # Parallel over blocks of 4 rows (t, n), register tile 4 rows x 2 gk; the
    # same launch makes WT in chunks of 16 rows (one prange less to compile).
    # Dense's blocked product (_rows: 4 rows (t, n) x 3 rows gk) with Wx = W[:, :, H:]
    # as its own contiguous (4H, I) array, parallel over chunks of rows (t, n);
    # the same launch makes WT in chunks of 16 rows (one prange less to compile).
    # (dots4x2 on W[:, :, H:] before.)  Forward, 2 threads, dynamic schedule: (100, 16, 128, 128)
    # f32 6.1 -> 5.7 ms, f64 10.4 -> 9.7 ms; (35, 20, 256, 256) f32 9.9 -> 9.1 ms, f64 18.9 -> 15.3 ms.
    KT, CB = _tiling(G, n_in * x.itemsize, 3)
    nch = (TN + 4 * CB - 1) // (4 * CB)
    for it in prange(nch + (H + n_in + 15) // 16):
        if it >= nch:
            j0 = 16 * (it - nch)
            _transpose(WT, W2, j0, min(j0 + 16, H + n_in))
        else:
            r_lo = 4 * CB * it
            r_hi = min(r_lo + 4 * CB, TN)
            for r in range(r_lo, r_hi):
                for j in range(n_in):
                    hx2[r, H + j] = x2[r, j]
            _rows(z2, x2, Wx, b2, False, r_lo, r_hi, KT)
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
                    s = dots4x2(hx2[r0], hx2[r0 + 1], hx2[r0 + 2], hx2[r0 + 3], W2[gk], W2[gk + 1], H)
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
                    cell_step(y, hT, cT, hx, a, c, sh, z, t, n, L, codes)
                else:
                    padded_step(y, hx, a, c, sh, t, n)


@kernel(dynamic=True)  # the dx blocks and the transposes in one launch differ in cost
def lstm_backward(dx: F3, dW: F3, db: F2, dh0: F2, dc0: F2, dz: F4, dzT: F2, hxT: F2, dy: F3, dhT: F2, dcT: F2,
                  hx: F3, z: F4, a: F4, c: F3, sh: F3, WT: F2, lengths: I1, rows: I1, codes: I1):
    """BPTT: dx, dh0, dc0 and the scratch overwritten; dW, db accumulated (``+=``).

    Outputs: dx (T, N, I); dW (4, H, H+I); db (4, H); dh0, dc0 (N, H) (they
    carry dL/dh_t, dL/dc_t backwards through time and end as dL/dh_0,
    dL/dc_0).  Scratch (allocated by the caller): dz (T, N, 4, H), dL/dz per
    gate (0 at padded steps); dzT (4H, V), hxT (H+I, V) the transposed dz and
    [h, x] rows of the V valid steps, ``rows`` (V,) int64 their indices
    r = t N + n in increasing order.  Upstream: dy (T, N, H) or (0, 0, 0) for
    none; dhT, dcT (N, H) gradients on the final state (zeros for none).
    Saved: hx, z, a, c, sh, WT from lstm_forward; lengths, codes as given to it.
    """
    T, N, n_in = dx.shape
    H = dh0.shape[1]
    G = 4 * H
    TN = T * N
    HI = H + n_in
    has_dy = dy.shape[0] == T
    zero = dx.dtype.type(0)
    dW2 = dW.reshape((G, HI))
    db2 = db.reshape(G)
    dz2 = dz.reshape((TN, G))
    dx2 = dx.reshape((TN, n_in))
    hx2 = hx.reshape((TN, HI))
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
                dh0[n, k] = dhT[n, k]
                dc0[n, k] = dcT[n, k]
            for t in range(T - 1, L - 1, -1):
                for gk in range(G):
                    dz2[t * N + n, gk] = zero
        for t in range(Lmax - 1, -1, -1):
            for n in range(n0, n1):
                if t >= lengths[n]:
                    continue
                for k in range(H):
                    # dh0/dc0 hold dL/dh_t (from step t+1) and dL/dc_{t+1} * f_{t+1}
                    dh = dh0[n, k]
                    if has_dy:
                        dh += dy[t, n, k]
                    o = a[t, n, GATE_O, k]
                    s = sh[t, n, k]
                    # reverses h_t = o_t * sigma_h(c_t):
                    # dL/dc_t = dL/dh_t * sigma_h'(c_t) * o_t + dL/dc_{t+1} * f_{t+1}
                    dsh = dx.dtype.type(dact_saved(c[t + 1, n, k], s, codes[SLOT_H]))
                    dc = dh * dsh * o + dc0[n, k]
                    # reverses c_t = f_t * c_{t-1} + i_t * n_t and the four gate lines
                    f = a[t, n, GATE_F, k]
                    i = a[t, n, GATE_I, k]
                    nn = a[t, n, GATE_N, k]
                    df = dc * c[t, n, k]
                    di = dc * nn
                    do = dh * s
                    dn = dc * i
                    dz[t, n, GATE_F, k] = df * dx.dtype.type(dact_saved(z[t, n, GATE_F, k], f, codes[GATE_F]))
                    dz[t, n, GATE_I, k] = di * dx.dtype.type(dact_saved(z[t, n, GATE_I, k], i, codes[GATE_I]))
                    dz[t, n, GATE_O, k] = do * dx.dtype.type(dact_saved(z[t, n, GATE_O, k], o, codes[GATE_O]))
                    dz[t, n, GATE_N, k] = dn * dx.dtype.type(dact_saved(z[t, n, GATE_N, k], nn, codes[GATE_N]))
                    # dL/dc_{t-1} = dL/dc_t * f_t
                    dc0[n, k] = dc * f
            # reverses z_g = W_g . [h_{t-1}, x_t] + b_g for the h half:
            # dL/dh_{t-1}[j] = sum over ALL FOUR gates g, k of dL/dz_g[k] W_g[k, j]
            # = dz2[r] . WT[j], 4 sequences x 2 columns j per pass
            r0 = t * N + n0
            if n1 - n0 == 4 and t < Lmin:
                for j in range(0, H - 1, 2):
                    s8 = dots4x2(dz2[r0], dz2[r0 + 1], dz2[r0 + 2], dz2[r0 + 3], WT[j], WT[j + 1], G)
                    dh0[n0, j] = s8[0]
                    dh0[n0, j + 1] = s8[1]
                    dh0[n0 + 1, j] = s8[2]
                    dh0[n0 + 1, j + 1] = s8[3]
                    dh0[n0 + 2, j] = s8[4]
                    dh0[n0 + 2, j + 1] = s8[5]
                    dh0[n0 + 3, j] = s8[6]
                    dh0[n0 + 3, j + 1] = s8[7]
                if H % 2 == 1:
                    s4 = dots4x1(dz2[r0], dz2[r0 + 1], dz2[r0 + 2], dz2[r0 + 3], WT[H - 1], G)
                    for m in range(4):
                        dh0[n0 + m, H - 1] = s4[m]
            else:
                for n in range(n0, n1):
                    if t < lengths[n]:
                        for j in range(H):
                            dh0[n, j] = dot1(dz2[t * N + n], WT[j], G)
    # After the recurrence, one launch for two independent jobs:
    # * x half: dL/dx_t[j] = sum_{g, k} dL/dz_g[k] W_g[k, H + j], blocks of 4 rows
    #   (t, n); 0 at padded steps;
    # * dzT, hxT: dz and [h_{t-1}, x_t] of the V valid rows (t, n), transposed so
    #   the dW sums below run over contiguous rows (16 rows of dzT / hxT per chunk).
    # The x half is dense's blocked product (_rows) on WT[H:] (I, 4H), over chunks
    # of rows (t, n); dz is 0 at padded steps and those rows are set to exactly 0.
    V = rows.shape[0]
    KX, CB = _tiling(n_in, G * WT.itemsize, 3)
    nrb = (TN + 4 * CB - 1) // (4 * CB)
    nzb = (G + 15) // 16
    for it in prange(nrb + nzb + (HI + 15) // 16):
        if it >= nrb + nzb:
            j0 = 16 * (it - nrb - nzb)
            j1 = min(j0 + 16, HI)
            transpose_rows(hxT[j0:j1], hx2, rows, j0, j1, 0)
        elif it >= nrb:
            j0 = 16 * (it - nrb)
            j1 = min(j0 + 16, G)
            transpose_rows(dzT[j0:j1], dz2, rows, j0, j1, 0)
        else:
            r_lo = 4 * CB * it
            r_hi = min(r_lo + 4 * CB, TN)
            _rows(dx2, dz2, WT[H:], db2[:0], False, r_lo, r_hi, KX)
            for r in range(r_lo, r_hi):
                t = r // N
                if t >= lengths[r - t * N]:
                    for j in range(n_in):
                        dx2[r, j] = zero
    # dL/dW_g[k, j] += sum_{t, n} dL/dz_g[k] [h_{t-1}, x_t][j] over the V valid
    # rows (t, n) in order: dense's blocked dot-product form (_rows, 4 rows gk x 3
    # rows j, 7 loads per 12 multiply-adds) over chunks of rows gk, which own dW and db.
    # (dots4x2 here before: 6 loads per 8.)  Backward, 2 threads: (50, 32, 32, 64) f32
    # 2.41 -> 2.06 ms, f64 3.73 -> 3.60 ms; (100, 16, 128, 128) f32 9.10 -> 8.21 ms, f64 16.9 -> 15.3 ms.
    KT, CB = _tiling(HI, V * dzT.itemsize, 3)
    nch = (G + 4 * CB - 1) // (4 * CB)
    for ch in prange(nch):
        g_lo = 4 * CB * ch
        g_hi = min(g_lo + 4 * CB, G)
        _rows(dW2, dzT, hxT, db2[:0], True, g_lo, g_hi, KT)
        for gk in range(g_lo, g_hi):
            s = zero
            for v in range(V):
                s += dzT[gk, v]
            db2[gk] += s
