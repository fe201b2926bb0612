"""Independent NumPy oracle for the LSTM kernels.

Written the textbook way, not like the kernels: each step concatenates
[h_{t-1}, x_t] and multiplies by the whole (4H, H+I) weight matrix with ``@``,
the gate derivatives come from complex-step differentiation
(``reference.activation_grad``), and BPTT builds dL/dh_{t-1} as ``dz @ W_h``
over the stacked four gates.  Variable lengths are handled by masking.
"""

from __future__ import annotations

import numpy as np
from reference import activation, activation_grad

DEFAULTS = {"f": "sigmoid", "i": "sigmoid", "o": "sigmoid", "n": "tanh", "h": "tanh"}


def _acts(activations):
    full = dict(DEFAULTS)
    full.update(activations or {})
    return full


def lstm_forward(x, W, b, h0=None, c0=None, activations=None, lengths=None):
    """Returns y (T, N, H), (hT, cT), and a dict of saved tensors."""
    acts = _acts(activations)
    T, N, n_in = x.shape
    H = W.shape[1]
    W2 = W.reshape(4 * H, H + n_in)
    b2 = b.reshape(4 * H)
    h = np.zeros((N, H)) if h0 is None else np.array(h0, dtype=np.float64)
    c = np.zeros((N, H)) if c0 is None else np.array(c0, dtype=np.float64)
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
    ys, saved = [], []
    for t in range(T):
        live = (t < lengths)[:, None]
        hx = np.concatenate([h, x[t]], axis=1)
        z = (hx @ W2.T + b2).reshape(N, 4, H)
        f, i, o, n = (activation(acts[g], z[:, k]) for k, g in enumerate("fion"))
        c_new = f * c + i * n
        h_new = o * activation(acts["h"], c_new)
        saved.append({"hx": hx, "z": z, "f": f, "i": i, "o": o, "n": n, "c_prev": c, "c": c_new, "live": live})
        ys.append(np.where(live, h_new, 0.0))
        h = np.where(live, h_new, h)
        c = np.where(live, c_new, c)
    return np.stack(ys), (h, c), {"steps": saved, "W": W, "acts": acts}


def lstm_backward(dy, saved, dhT=None, dcT=None, h_gates="fion"):
    """BPTT; returns (dx, dW, db, dh0, dc0).

    ``h_gates`` lists the gates whose term enters dL/dh_{t-1}: "fion" is the
    correct rule, anything shorter is the dropped-terms mutant the tests use.
    """
    steps, W, acts = saved["steps"], saved["W"], saved["acts"]
    T = len(steps)
    N, H = steps[0]["c"].shape
    n_in = W.shape[2] - H
    W2 = W.reshape(4 * H, H + n_in)
    keep = np.array([g in h_gates for g in "fion"], dtype=float).repeat(H)
    dh = np.zeros((N, H)) if dhT is None else np.array(dhT, dtype=np.float64)
    dc = np.zeros((N, H)) if dcT is None else np.array(dcT, dtype=np.float64)
    dx = np.zeros((T, N, n_in))
    dW2 = np.zeros_like(W2)
    db2 = np.zeros(4 * H)
    for t in range(T - 1, -1, -1):
        s = steps[t]
        live = s["live"]
        g_up = dh + (0.0 if dy is None else dy[t])
        sh = activation(acts["h"], s["c"])
        dc_t = g_up * activation_grad(acts["h"], s["c"]) * s["o"] + dc
        dgate = {"f": dc_t * s["c_prev"], "i": dc_t * s["n"], "o": g_up * sh, "n": dc_t * s["i"]}
        dz = np.concatenate([dgate[g] * activation_grad(acts[g], s["z"][:, k]) for k, g in enumerate("fion")], axis=1)
        dz = np.where(live, dz, 0.0)
        dW2 += dz.T @ s["hx"]
        db2 += dz.sum(axis=0)
        dhx = dz @ W2
        dx[t] = dhx[:, H:]
        dh_prev = (dz * keep) @ W2[:, :H]
        dh = np.where(live, dh_prev, dh)
        dc = np.where(live, dc_t * s["f"], dc)
    return dx, dW2.reshape(W.shape), db2.reshape(4, H), dh, dc
