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

Every matrix product runs through the product core (``kernels.products``:
packed panels, a register tile of vectors, cache blocks from the CPU),
with the gate and unit merged, gk = g H + k, W viewed as W2 (4H, H+I) and read
through strides (no transposed copy).  Race-free and bitwise identical at any
thread count:

* input projection ``b + W[:, :, H:] . x_t`` for every (t, n) before the time
  loop: one product (TN, I) x (I, 4H), parallel over its tasks;
* the recurrence ``z_t += h_{t-1} W[:, :, :H]^T``: time is serial inside each
  sequence and sequences are independent, so the loop is parallel over the
  core's row blocks of sequences with the whole time loop inside (one parallel launch per
  call, no per-step barrier); W[:, :, :H]^T is packed once per call, h_{t-1}
  of the block is packed per step and one micro-kernel row of tiles adds the
  block's four gates;
* backward: dL/dh_{t-1} = dz_t W[:, :, :H], the same way per block and step;
  db summed per sequence as each step's dz is made, then over the sequences in
  order; then dx = dz W[:, :, H:] and dW += dz^T [h, x] over all (t, n) (dz is 0
  at padded steps), as two products packed in one launch.

``lengths[n]`` (1 <= lengths[n] <= T) marks sequence n's real steps; padded
steps t >= lengths[n] output 0, leave the state unchanged and get no gradient.
``codes`` is an int64 array (5,) of activation codes for (f, i, o, n, h).
The kernels take their arrays bundled by role (:class:`LSTMOut`,
:class:`LSTMSaved`, :class:`LSTMParams`, :class:`LSTMGrads`,
:class:`LSTMUpstream`, :class:`LSTMScratch`).
"""

from typing import NamedTuple

import numpy as np
from numba import prange

from .._jit import CORE_SERIAL_BELOW, F1, F2, F3, F4, I1, helper, kernel
from .activations import act_row, dact_from_output_row
from .products import (
    ACCUMULATE,
    OVERWRITE,
    GemmPlan,
    Operand,
    Packed,
    gemm_task,
    pack_b_count,
    pack_b_item,
    pack_count,
    pack_item,
    pack_pair_item,
    recurrence_block,
    recurrence_block_count,
    recurrence_panel,
    row_block_product,
    task_count,
)

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
    c[0] = c0, c[t+1] = c_t; sh (T, N, H) sigma_h(c_t).
    """

    hx: F3
    z: F4
    a: F4
    c: F3
    sh: F3


class LSTMInputs(NamedTuple):
    """x (T, N, I); h0, c0 (N, H); lengths (N,) int64 in [1, T]; codes (5,) int64 activation codes (f, i, o, n, h)."""

    x: F3
    h0: F2
    c0: F2
    lengths: I1
    codes: I1


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


class LSTMBuffers(NamedTuple):
    """Packing buffers of lstm_forward (overwritten): a, b of the input projection
    (``products.packed_sizes``); rec_b W[:, :, :H]^T packed once per call; rec_a one
    panel of h_{t-1} per row block of sequences (``products.recurrence_panels_size(plan_rec, H)``)."""

    a: F1
    b: F1
    rec_a: F1
    rec_b: F1


class LSTMScratch(NamedTuple):
    """Scratch of lstm_backward (overwritten).

    dz (T, N, 4, H) dL/dz per gate (0 at padded steps); dh, dc (N, H) the carries
    dL/dh_t and dL/dc_{t+1} f_{t+1} flowing back through time; db_seq (N, 4H) each
    sequence's dL/db, summed over its steps as they are computed; the packing
    buffers of dx (dx_a, dx_b) and dW (dw_a, dw_b); rec_b W[:, :, :H] packed once,
    rec_a one panel of dz_t (``products.recurrence_panels_size(plan_rec, 4H)``) and rec_tmp
    one tile of dL/dh_{t-1} (``recurrence_panels_size(plan_rec, H)``) per row block of sequences.
    """

    dz: F4
    dh: F2
    dc: F2
    db_seq: F2
    dx_a: F1
    dx_b: F1
    dw_a: F1
    dw_b: F1
    rec_a: F1
    rec_b: F1
    rec_tmp: F1


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


@helper
def gate_products_reference(z, hx, W, b):
    """z[t, n, g, k] = b[g, k] + sum_j W[g, k, j] [h_{t-1}, x_t][j]: the plain loop of the gates'
    pre-activations that lstm_forward's projection and recurrence compute (the tests' oracle).

    hx (T, N, H+I) the rows [h_{t-1}, x_t] (saved by the forward); z (T, N, 4, H) overwritten.
    """
    T, N, HI = hx.shape
    H = W.shape[1]
    for t in range(T):
        for n in range(N):
            for g in range(4):
                for k in range(H):
                    acc = z.dtype.type(0)
                    for j in range(HI):
                        acc += W[g, k, j] * hx[t, n, j]
                    z[t, n, g, k] = b[g, k] + acc


@helper
def gate_backward_products_reference(dhx, dW, db, dz, hx, W):
    """The plain loops of lstm_backward's products (the tests' oracle), from dL/dz of every step:

    dW[g, k, j] += sum_{t, n} dL/dz[t, n, g, k] [h_{t-1}, x_t][j];   db[g, k] += sum_{t, n} dL/dz[t, n, g, k];
    dhx[t, n, j] = sum_{g, k} dL/dz[t, n, g, k] W[g, k, j]   (overwritten: j < H is dL/dh_{t-1}, H + j is dL/dx_t[j]).
    """
    T, N, HI = hx.shape
    H = W.shape[1]
    zero = dz.dtype.type(0)
    for g in range(4):
        for k in range(H):
            for j in range(HI):
                acc = zero
                for t in range(T):
                    for n in range(N):
                        acc += dz[t, n, g, k] * hx[t, n, j]
                dW[g, k, j] += acc
            acc = zero
            for t in range(T):
                for n in range(N):
                    acc += dz[t, n, g, k]
            db[g, k] += acc
    for t in range(T):
        for n in range(N):
            for j in range(HI):
                acc = zero
                for g in range(4):
                    for k in range(H):
                        acc += dz[t, n, g, k] * W[g, k, j]
                dhx[t, n, j] = acc


@kernel(serial_below=CORE_SERIAL_BELOW)
def lstm_forward(out: LSTMOut, saved: LSTMSaved, inputs: LSTMInputs, W: F3, b: F2, buffers: LSTMBuffers,
                 plan_proj: GemmPlan, plan_rec: GemmPlan):
    """Forward pass over all T steps, saving what lstm_backward needs.

    Outputs (overwritten): ``out`` (:class:`LSTMOut`) and ``saved``
    (:class:`LSTMSaved`).  inputs (:class:`LSTMInputs`); W (4, H, H+I); b (4, H);
    buffers (:class:`LSTMBuffers`); plan_proj the product (TN, I) x (I, 4H),
    plan_rec the recurrence's (N, H) x (H, 4H) (``products.recurrence_plan``; the others
    ``products.gemm_plan``).

    Matrices are viewed with the gate and unit merged, row gk = g H + k:
    W2 (4H, H+I), z2 (T N, 4H), hx2 (T N, H+I), x2 (T N, I).
    """
    # bundled arrays as local names before any prange (numba issue 5872)
    x = inputs.x
    h0 = inputs.h0
    c0 = inputs.c0
    lengths = inputs.lengths
    codes = inputs.codes
    hx = saved.hx
    c = saved.c
    T, N, n_in = x.shape
    H = W.shape[1]
    G = 4 * H
    HI = H + n_in
    TN = T * N
    z2f = saved.z.reshape(-1)
    x2 = x.reshape((TN, n_in))
    hx2 = hx.reshape((TN, HI))
    W2f = W.reshape(-1)
    proj = Packed(buffers.a, buffers.b)
    rec_b = buffers.rec_b
    # z_g[k] = b_g[k] + sum_j W_g[k, H + j] x_t[j] for all (t, n) at once (the input
    # half of W . [h_{t-1}, x_t] does not depend on the recurrence); B = W[:, :, H:]^T
    # read in place.  The same launch packs W[:, :, :H]^T for the recurrence and
    # copies x into the rows [h, x].
    a_x = Operand(x2.reshape(-1), n_in, 1)
    b_x = Operand(W2f[H:], 1, HI)
    b_h = Operand(W2f, 1, HI)
    n_proj = pack_count(proj, plan_proj)
    n_rec = pack_b_count(rec_b, plan_rec)
    for q in prange(n_proj + n_rec + (TN + 63) // 64):
        it = np.int64(q)
        if it < n_proj:
            pack_item(it, a_x, b_x, proj, plan_proj)
        elif it < n_proj + n_rec:
            pack_b_item(it - n_proj, b_h, rec_b, plan_rec)
        else:
            r0 = 64 * (it - n_proj - n_rec)
            for r in range(r0, min(r0 + 64, TN)):
                for j in range(n_in):
                    hx2[r, H + j] = x2[r, j]
    for t in prange(task_count(plan_proj)):
        gemm_task(np.int64(t), z2f, G, b.reshape(-1), OVERWRITE, proj, plan_proj)
    # The recurrence: time serial inside each row block of sequences, blocks in
    # parallel (one launch per call).  z_g[k] += sum_j W_g[k, j] h_{t-1}[j] for the
    # four gates of the block's sequences in one row of register tiles.
    a_h = Operand(hx2.reshape(-1), HI, 1)
    rec_a = buffers.rec_a
    for q in prange(recurrence_block_count(plan_rec)):
        blk = np.int64(q)
        n0, nb = recurrence_block(blk, plan_rec)
        panel = Packed(recurrence_panel(rec_a, blk, H), rec_b)
        for n in range(n0, n0 + nb):
            for k in range(H):
                hx[0, n, k] = h0[n, k]
                c[0, n, k] = c0[n, k]
        for t in range(T):
            r0 = t * N + n0
            row_block_product(a_h, r0, nb, panel, plan_rec, z2f[r0 * G:], G, ACCUMULATE)
            for n in range(n0, n0 + nb):
                L = lengths[n]
                if t < L:
                    cell_step(out, saved, t, n, L, codes)
                else:
                    padded_step(out, saved, t, n)


@helper
def gate_grad_row(dz, db, d_out, other):
    """One gate's row: dL/dg_t[k] = d_out[k] * other[k], then dL/dz_g[k] = dL/dg_t[k] * dz[k]
    (dz's row holds sigma_g'(z_g) on entry, dL/dz_g on return) and db[k] += dL/dz_g[k]."""
    for k in range(dz.shape[0]):
        dz_g = d_out[k] * other[k] * dz[k]
        dz[k] = dz_g
        db[k] += dz_g


@helper
def cell_backward(grads, scratch, upstream, saved, t, n, codes, dsh):
    """dL/dz of the four gates of valid step t of sequence n, and the carried dL/dc_{t-1}.

    scratch.dh[n] holds dL/dh_t from step t+1 (the upstream dy[t, n] is added to it
    here) and scratch.dc[n] holds dL/dc_{t+1} f_{t+1}; dsh is a free row of H values
    (overwritten with sigma_h'(c_t)).  The four dL/dz_g[k] are also added to the
    sequence's dL/db, scratch.db_seq[n, g H + k].

    Row by row, each loop touching at most four rows: one loop over all of them
    needed more run-time overlap checks between its 9 written and 8 read rows than
    LLVM makes, so it ran scalar (6.6 ns per k at the char-LM sizes, float32, 1
    thread, AMD EPYC Zen 4).
    """
    a = saved.a
    dz = scratch.dz
    db = scratch.db_seq[n]
    H = scratch.dh.shape[1]
    dh = scratch.dh[n]
    dc = scratch.dc[n]
    # sigma_g'(z_g) of every gate into dz's rows (scaled by dL/dg_t below) and
    # sigma_h'(c_t) into dsh: whole rows, so the default activations vectorise
    for g in range(4):
        dact_from_output_row(dz[t, n, g], saved.z[t, n, g], a[t, n, g], codes[g])
    dact_from_output_row(dsh, saved.c[t + 1, n], saved.sh[t, n], codes[SLOT_H])
    if upstream.dy.shape[0] == dz.shape[0]:
        dy = upstream.dy[t, n]
        for k in range(H):
            dh[k] += dy[k]
    gate_o = a[t, n, GATE_O]
    for k in range(H):
        # reverses h_t = o_t * sigma_h(c_t):
        # dL/dc_t = dL/dh_t * sigma_h'(c_t) * o_t + dL/dc_{t+1} * f_{t+1}
        dc[k] = dh[k] * dsh[k] * gate_o[k] + dc[k]
    # reverses c_t = f_t * c_{t-1} + i_t * n_t and h_t = o_t * sigma_h(c_t), gate by gate
    # (dL/df_t = dL/dc_t * c_{t-1}, ...), then dL/dz_g = dL/dg_t * sigma_g'(z_g) and db_g += dL/dz_g
    gate_grad_row(dz[t, n, GATE_F], db[GATE_F * H:(GATE_F + 1) * H], dc, saved.c[t, n])  # d_f = dc * c_{t-1}
    gate_grad_row(dz[t, n, GATE_I], db[GATE_I * H:(GATE_I + 1) * H], dc, a[t, n, GATE_N])  # d_i = dc * n_t
    gate_grad_row(dz[t, n, GATE_O], db[GATE_O * H:(GATE_O + 1) * H], dh, saved.sh[t, n])  # d_o = dh * sigma_h(c_t)
    gate_grad_row(dz[t, n, GATE_N], db[GATE_N * H:(GATE_N + 1) * H], dc, a[t, n, GATE_I])  # d_n = dc * i_t
    gate_f = a[t, n, GATE_F]
    for k in range(H):
        # dL/dc_{t-1} = dL/dc_t * f_t
        dc[k] = dc[k] * gate_f[k]


@kernel(dynamic=True, serial_below=CORE_SERIAL_BELOW)  # the last block of sequences may be short
def lstm_backward(grads: LSTMGrads, scratch: LSTMScratch, upstream: LSTMUpstream, saved: LSTMSaved, W: F3,
                  lengths: I1, codes: I1, plan_rec: GemmPlan, plan_dx: GemmPlan, plan_dw: GemmPlan):
    """BPTT: every gradient in ``grads`` accumulated (``+=``); ``scratch`` overwritten.

    grads (:class:`LSTMGrads`); scratch (:class:`LSTMScratch`), allocated by the
    caller; upstream (:class:`LSTMUpstream`); saved, W, lengths, codes as given to
    lstm_forward.  plan_rec: the recurrence's (N, 4H) x (4H, H) (``products.recurrence_plan``);
    plan_dx: (TN, 4H) x (4H, I); plan_dw: (4H, TN) x (TN, H+I) (``products.gemm_plan``).
    """
    # bundled arrays as local names before any prange (numba issue 5872)
    T, N, n_in = grads.dx.shape
    H = W.shape[1]
    G = 4 * H
    HI = H + n_in
    TN = T * N
    zero = grads.dx.dtype.type(0)
    dh = scratch.dh
    dc = scratch.dc
    dh0 = grads.dh0
    dc0 = grads.dc0
    dhT = upstream.dhT
    dcT = upstream.dcT
    dz2 = scratch.dz.reshape((TN, G))
    dz2f = scratch.dz.reshape(-1)
    dxf = grads.dx.reshape(-1)
    dW2f = grads.dW.reshape(-1)
    db2 = grads.db.reshape(-1)
    hx2f = saved.hx.reshape(-1)
    W2f = W.reshape(-1)
    rec_a = scratch.rec_a
    rec_b = scratch.rec_b
    rec_tmp = scratch.rec_tmp
    db_seq = scratch.db_seq
    # W[:, :, :H] packed as B (4H, H), B[gk, j] = W_g[k, j], for dL/dh_{t-1} = dz_t B
    b_h = Operand(W2f, HI, 1)
    for q in prange(pack_b_count(rec_b, plan_rec)):
        pack_b_item(np.int64(q), b_h, rec_b, plan_rec)
    # The recurrence backwards in time, parallel over row blocks of sequences.
    a_dz = Operand(dz2f, G, 1)
    for q in prange(recurrence_block_count(plan_rec)):
        blk = np.int64(q)
        n0, nb = recurrence_block(blk, plan_rec)
        panel = Packed(recurrence_panel(rec_a, blk, G), rec_b)
        tmp = recurrence_panel(rec_tmp, blk, H)
        Lmax = 0
        for n in range(n0, n0 + nb):
            L = lengths[n]
            Lmax = max(Lmax, L)
            for k in range(H):
                dh[n, k] = dhT[n, k]
                dc[n, k] = dcT[n, k]
            for gk in range(G):
                db_seq[n, gk] = zero
            for t in range(T - 1, L - 1, -1):
                for gk in range(G):
                    dz2[t * N + n, gk] = zero
        for t in range(Lmax - 1, -1, -1):
            for n in range(n0, n0 + nb):
                if t < lengths[n]:
                    # the block's product tile is free until row_block_product below: sigma_h' goes there
                    cell_backward(grads, scratch, upstream, saved, t, n, codes, tmp[(n - n0) * H:(n - n0 + 1) * H])
            # reverses z_g = W_g . [h_{t-1}, x_t] + b_g for the h half:
            # dL/dh_{t-1}[j] = sum over ALL FOUR gates g, k of dL/dz_g[k] W_g[k, j]
            row_block_product(a_dz, t * N + n0, nb, panel, plan_rec, tmp, H, OVERWRITE)
            for n in range(n0, n0 + nb):
                if t < lengths[n]:
                    for j in range(H):
                        dh[n, j] = tmp[(n - n0) * H + j]
        # the carries are now dL/dh_0 and dL/dc_0 of the block's sequences
        for n in range(n0, n0 + nb):
            for k in range(H):
                dh0[n, k] += dh[n, k]
                dc0[n, k] += dc[n, k]
    # db_g[k] += sum over sequences n, in order, of each one's sum over its steps: the same
    # terms in the same order whichever block a sequence was in.  Summed in the recurrence,
    # where dz is in registers, not in a second pass over dz (T N x 4H) after it: that pass
    # cost 0.18-0.34 ms of a 6 ms backward (M, char-LM sizes; float32, AMD EPYC Zen 4, 2 threads).
    for n in range(N):
        for gk in range(G):
            db2[gk] += db_seq[n, gk]
    # After the recurrence, two products over all (t, n), packed in one launch (dz is 0 at
    # padded steps, so those rows add nothing):
    #   dx[t, n, j]  += sum_{g, k} dL/dz_g[k] W_g[k, H + j]     A = dz (TN, 4H), B = W[:, :, H:]
    #   dW_g[k, j]   += sum_{t, n} dL/dz_g[k] [h_{t-1}, x_t][j]  A = dz^T (4H, TN), B = [h, x] (TN, H+I)
    p_dx = Packed(scratch.dx_a, scratch.dx_b)
    p_dw = Packed(scratch.dw_a, scratch.dw_b)
    a_dx = Operand(dz2f, G, 1)
    b_dx = Operand(W2f[H:], HI, 1)
    a_dw = Operand(dz2f, 1, G)
    b_dw = Operand(hx2f, HI, 1)
    n_dx = pack_count(p_dx, plan_dx)
    for t in prange(n_dx + pack_count(p_dw, plan_dw)):
        pack_pair_item(np.int64(t), n_dx, a_dx, b_dx, p_dx, plan_dx, a_dw, b_dw, p_dw, plan_dw)
    # The two products in two launches, not one: their tasks mixed in one launch
    # ran 1.5x slower (products phase 7.1 -> 4.6 ms at (100, 16, 128, 128) float32,
    # char-LM sizes 5.8 -> 3.9 ms; AMD EPYC Zen 3, 2 threads, 45 interleaved calls).
    none = db2[:0]
    for t in prange(task_count(plan_dx)):
        gemm_task(np.int64(t), dxf, n_in, none, ACCUMULATE, p_dx, plan_dx)
    for t in prange(task_count(plan_dw)):
        gemm_task(np.int64(t), dW2f, HI, none, ACCUMULATE, p_dw, plan_dw)
