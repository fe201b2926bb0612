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

Parallel layout (race-free, bitwise identical at any thread count):

* input projection ``b + W[:, :, H:] . x_t`` for every (t, n) before the time
  loop: one big loop, parallel over the (t, n) rows that own the outputs;
* the recurrence: time is serial inside each sequence, sequences are
  independent, so the loop is parallel over samples n with the whole time loop
  inside (one parallel launch per call, not one per step);
* dW, db: parallel over the (gate, hidden unit) rows that own them,
  accumulating over t and n in a fixed order;
* dx: parallel over the (t, n) rows after the recurrence.

``lengths[n]`` (1 <= lengths[n] <= T) marks sequence n's real steps; padded
steps t >= lengths[n] output 0, leave the state unchanged and get no gradient.
``codes`` is an int64 array (5,) of activation codes for (f, i, o, n, h).
"""

import math

from numba import prange

from .._jit import helper, kernel
from .activations import act, dact

GATE_F, GATE_I, GATE_O, GATE_N = 0, 1, 2, 3
SLOT_H = 4


@helper
def act_row(out, z, code):
    """out[k] = sigma(z[k]) over one row, in the row's dtype.

    The branch on ``code`` sits outside the loop and sigmoid/tanh are computed
    inline (expf/tanhf for float32): measured 2.4x faster than one ``act`` call
    per element, which was the largest cost of the forward pass at H = 64.
    1 / (1 + e^-z) is exact in its limits in IEEE arithmetic (e^-z = inf gives 0).
    """
    one = out.dtype.type(1)
    if code == 1:
        for k in range(z.shape[0]):
            out[k] = one / (one + math.exp(-z[k]))
    elif code == 2:
        for k in range(z.shape[0]):
            out[k] = math.tanh(z[k])
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


@kernel
def lstm_forward(y, hT, cT, hx, z, a, c, sh, x, W, b, h0, c0, lengths, codes):
    """Forward pass over all T steps, saving what lstm_backward needs.

    Outputs (overwritten):
      y (T, N, H)          h_t for every step (0 at padded steps)
      hT, cT (N, H)        state at each sequence's own last step
    Saved for backward (overwritten):
      hx (T, N, H+I)       the rows [h_{t-1}, x_t]
      z, a (T, N, 4, H)    gate pre-activations and activations (f, i, o, n)
      c (T+1, N, H)        cell states, c[0] = c0, c[t+1] = c_t
      sh (T, N, H)         sigma_h(c_t)
    Inputs: x (T, N, I); W (4, H, H+I); b (4, H); h0, c0 (N, H); lengths (N,)
    int64; codes (5,) int64.
    """
    T, N, n_in = x.shape
    H = W.shape[1]
    zero = y.dtype.type(0)
    # z_g[k] = b_g[k] + sum_j W_g[k, H + j] x_t[j] for all (t, n): the input half
    # of W . [h_{t-1}, x_t] does not depend on the recurrence.
    for r in prange(T * N):
        t = r // N
        n = r - t * N
        for j in range(n_in):
            hx[t, n, H + j] = x[t, n, j]
        for g in range(4):
            for k in range(H):
                acc = b[g, k]
                for j in range(n_in):
                    acc += W[g, k, H + j] * x[t, n, j]
                z[t, n, g, k] = acc
    for n in prange(N):
        L = lengths[n]
        for k in range(H):
            hx[0, n, k] = h0[n, k]
            c[0, n, k] = c0[n, k]
        for t in range(T):
            if t >= L:
                # padded step: output 0, state carried unchanged, nothing saved
                for k in range(H):
                    y[t, n, k] = zero
                    sh[t, n, k] = zero
                    c[t + 1, n, k] = c[t, n, k]
                    if t + 1 < T:
                        hx[t + 1, n, k] = zero
                for g in range(4):
                    for k in range(H):
                        a[t, n, g, k] = zero
                continue
            # z_g[k] += sum_j W_g[k, j] h_{t-1}[j]: all four gates in one pass,
            # innermost j over the contiguous rows W[g, k, :H] and hx[t, n, :H]
            for g in range(4):
                for k in range(H):
                    acc = zero
                    for j in range(H):
                        acc += W[g, k, j] * hx[t, n, j]
                    z[t, n, g, k] += acc
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


@kernel
def lstm_backward(dx, dW, db, dh0, dc0, dz, dy, dhT, dcT, hx, z, a, c, sh, W, lengths, codes):
    """BPTT: dx, dh0, dc0, dz overwritten; dW, db accumulated (``+=``).

    Outputs: dx (T, N, I); dW (4, H, H+I); db (4, H); dh0, dc0 (N, H) (they
    carry dL/dh_t, dL/dc_t backwards through time and end as dL/dh_0,
    dL/dc_0); dz (T, N, 4, H) workspace, dL/dz per gate (0 at padded steps).
    Upstream: dy (T, N, H) or (0, 0, 0) for none; dhT, dcT (N, H) gradients on
    the final state (zeros for none).  Saved: hx, z, a, c, sh from
    lstm_forward; W, lengths, codes as given to it.
    """
    T, N, n_in = dx.shape
    H = W.shape[1]
    has_dy = dy.shape[0] == T
    zero = dx.dtype.type(0)
    for n in prange(N):
        L = lengths[n]
        for k in range(H):
            dh0[n, k] = dhT[n, k]
            dc0[n, k] = dcT[n, k]
        for t in range(T - 1, L - 1, -1):
            for g in range(4):
                for k in range(H):
                    dz[t, n, g, k] = zero
        for t in range(L - 1, -1, -1):
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
            for j in range(H):
                dh0[n, j] = zero
            for g in range(4):
                for k in range(H):
                    d = dz[t, n, g, k]
                    for j in range(H):
                        dh0[n, j] += d * W[g, k, j]
    # x half: dL/dx_t[j] = sum_{g, k} dL/dz_g[k] W_g[k, H + j], parallel over rows (t, n)
    for r in prange(T * N):
        t = r // N
        n = r - t * N
        for j in range(n_in):
            dx[t, n, j] = zero
        if t >= lengths[n]:
            continue
        for g in range(4):
            for k in range(H):
                d = dz[t, n, g, k]
                for j in range(n_in):
                    dx[t, n, j] += d * W[g, k, H + j]
    # dL/dW_g[k, j] += sum_{t, n} dL/dz_g[k] [h_{t-1}, x_t][j], parallel over rows (g, k)
    for gk in prange(4 * H):
        g = gk // H
        k = gk - g * H
        for t in range(T):
            for n in range(N):
                if t >= lengths[n]:
                    continue
                d = dz[t, n, g, k]
                db[g, k] += d
                for j in range(H + n_in):
                    dW[g, k, j] += d * hx[t, n, j]
