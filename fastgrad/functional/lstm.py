"""LSTM, functional: validate, allocate, call the kernels (kernels.lstm).

``lstm_forward(x, W, b, h0, c0, activations, lengths)`` returns
``((y, (hT, cT)), cache)``; ``lstm_backward(dy, cache, dhT, dcT)`` returns
``(dx, dW, db, dh0, dc0)`` and ``lstm_backward_into(grads, dy, cache, dhT,
dcT)`` accumulates them into ``grads``.  Layout: x (T, N, I) time first; W
(4, H, H+I) with gates (f, i, o, n) acting on [h_{t-1}, x_t]; b (4, H).  The
equations are in :mod:`fastgrad.kernels.lstm`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _jit
from .._checks import activation_code, as_array, check_alloc, check_shape
from .._workspace import recycled, recycled_zeros, scratch
from ..kernels import lstm as klstm
from ..kernels import products
from .common import EMPTY3, grad_buffer, same_dtype, unpack_grads, upstream

#: activation slots of the cheat sheet: sigma_f, sigma_i, sigma_o, sigma_n, sigma_h
LSTM_GATES = ("f", "i", "o", "n", "h")
LSTM_DEFAULT_ACTIVATIONS = {"f": "sigmoid", "i": "sigmoid", "o": "sigmoid", "n": "tanh", "h": "tanh"}


class LSTMCache(NamedTuple):
    """What lstm_backward needs: the saved per-step tensors, the parameters and the options.

    saved: kernels.lstm.LSTMSaved (hx, z, a, c, sh); W, b as given;
    lengths (N,) int64; activations the full dict; codes (5,) int64 kernel codes.
    """

    saved: klstm.LSTMSaved
    W: np.ndarray
    b: np.ndarray
    lengths: np.ndarray
    activations: dict
    codes: np.ndarray


def lstm_activations(activations, where: str) -> dict:
    """The full {"f","i","o","n","h"} dict (defaults filled in), validated."""
    if activations is None:
        return dict(LSTM_DEFAULT_ACTIVATIONS)
    if not isinstance(activations, dict):
        raise TypeError(f"{where}: activations must be a dict with keys f, i, o, n, h or None, got {type(activations).__name__}")
    unknown = [k for k in activations if k not in LSTM_DEFAULT_ACTIVATIONS]
    if unknown:
        raise ValueError(f"{where}: unknown activations key {unknown[0]!r}; expected keys among f, i, o, n, h"[:299])
    full = dict(LSTM_DEFAULT_ACTIVATIONS)
    for key, name in activations.items():
        activation_code(name, where, f"activations[{key!r}]")
        full[key] = name
    return full


def lstm_lengths(lengths, T: int, N: int, where: str) -> np.ndarray:
    """lengths (N,) of ints in [1, T] as int64 (all T when None); floats/bools refused."""
    if lengths is None:
        return np.full(N, T, np.int64)
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{where}: lengths must be integers (N,), got dtype {arr.dtype}")
    if arr.shape != (N,):
        raise ValueError(f"{where}: lengths must have shape ({N},) (one per sequence), got {arr.shape}")
    if N and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"{where}: lengths must be in [1, T={T}], got values in [{arr.min()}, {arr.max()}]")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _state(s, name, N, H, x, where, check_finite):
    if s is None:
        return np.zeros((N, H), x.dtype)
    s = as_array(s, name, where, ndim=2, check_finite=check_finite)
    same_dtype(s, x, name, where)
    check_shape(s, (N, H), name, where)
    return s


def lstm_forward(x, W, b, h0=None, c0=None, activations=None, lengths=None, *, check_finite=None):
    """LSTM over a batch of sequences; returns ``((y, (hT, cT)), cache)``.

    x (T, N, I); W (4, H, H+I) gates (f, i, o, n) on [h_{t-1}, x_t]; b (4, H);
    h0, c0 (N, H) or None for zeros; activations dict with keys among
    "f","i","o","n","h" (defaults sigmoid, sigmoid, sigmoid, tanh, tanh);
    lengths (N,) ints in [1, T] or None: steps t >= lengths[n] are padding
    (output 0, state unchanged, no gradient) and (hT, cT) is each sequence's
    state at its own last step.  y (T, N, H); hT, cT (N, H).
    """
    where = "lstm_forward"
    acts = lstm_activations(activations, where)
    x = as_array(x, "x", where, ndim=3, check_finite=check_finite)
    W = as_array(W, "W", where, ndim=3, check_finite=check_finite)
    b = as_array(b, "b", where, ndim=2, check_finite=check_finite)
    same_dtype(W, x, "W", where)
    same_dtype(b, x, "b", where)
    T, N, n_in = x.shape
    if T == 0:
        raise ValueError(f"{where}: x has zero time steps (shape {x.shape}); T must be >= 1")
    if N == 0:
        raise ValueError(f"{where}: x has an empty batch (shape {x.shape})")
    if n_in == 0:
        raise ValueError(f"{where}: x has zero input features (shape {x.shape})")
    if W.shape[0] != 4 or W.shape[1] == 0:
        raise ValueError(f"{where}: W must have shape (4, H, H+I) with H >= 1 (gates f, i, o, n), got {W.shape}")
    H = W.shape[1]
    if W.shape[2] != H + n_in:
        raise ValueError(f"{where}: W.shape[2]={W.shape[2]} must be H+I={H}+{n_in}={H + n_in} (W acts on [h_(t-1), x_t])")
    check_shape(b, (4, H), "b", where)
    h0 = _state(h0, "h0", N, H, x, where, check_finite)
    c0 = _state(c0, "c0", N, H, x, where, check_finite)
    lens = lstm_lengths(lengths, T, N, where)
    check_alloc(where, x.dtype, [("y", (T, N, H)), ("saved gates and states", (T * N * (10 * H + n_in) + 4 * H * (H + n_in),))])
    dt = x.dtype
    # recycled: the outputs and saved tensors of an earlier call nobody holds any more
    # (fresh ones page-faulted 1220 times a call at (50, 32, 32, 64), 3.8 ms against 1.7 ms)
    out = klstm.LSTMOut(recycled((T, N, H), dt), recycled((N, H), dt), recycled((N, H), dt))
    saved = klstm.LSTMSaved(
        hx=recycled((T, N, H + n_in), dt),
        z=recycled((T, N, 4, H), dt),
        a=recycled((T, N, 4, H), dt),
        c=recycled((T + 1, N, H), dt),
        sh=recycled((T, N, H), dt),
    )
    codes = np.array([activation_code(acts[g], where) for g in LSTM_GATES], np.int64)
    work = T * N * 4 * H * (H + n_in)
    plan_proj = products.gemm_plan(T * N, 4 * H, n_in, dt)
    plan_rec = products.recurrence_plan(N, 4 * H, H, dt)
    sizes = [*products.packed_sizes(plan_proj, dt), products.recurrence_panels_size(plan_rec, H), products.packed_b_size(plan_rec, dt)]
    with scratch(dt, *[(size,) for size in sizes]) as bufs:
        inputs = klstm.LSTMInputs(x, h0, c0, lens, codes)
        _jit.pick(klstm.lstm_forward, work)(out, saved, inputs, W, b, klstm.LSTMBuffers(*bufs), plan_proj, plan_rec)
    return (out.y, (out.hT, out.cT)), LSTMCache(saved, W, b, lens, acts, codes)


def lstm_backward(dy, cache, dhT=None, dcT=None, *, check_finite=None):
    """Full BPTT for lstm_forward; returns ``(dx, dW, db, dh0, dc0)``.

    dy (T, N, H) upstream gradient on every output h_t, or None; dhT, dcT
    (N, H) upstream gradients on the final state, or None.  Any combination may
    be given (None counts as zeros).  Gradients at padded steps are ignored.
    """
    where = "lstm_backward"
    _check_cache(cache, where)
    T, N = cache.saved.hx.shape[:2]
    H = cache.W.shape[1]
    dt = cache.W.dtype
    grads = (recycled_zeros((T, N, cache.W.shape[2] - H), dt), recycled_zeros(cache.W.shape, dt),
             recycled_zeros(cache.b.shape, dt), recycled_zeros((N, H), dt), recycled_zeros((N, H), dt))
    _backward(grads, dy, cache, dhT, dcT, check_finite, where)
    return grads


def lstm_backward_into(grads, dy, cache, dhT=None, dcT=None, *, check_finite=None) -> None:
    """Accumulate (``+=``) the gradients of lstm_forward into ``grads`` = (dx, dW, db, dh0, dc0).

    Shapes: dx (T, N, I), dW (4, H, H+I), db (4, H), dh0, dc0 (N, H); writable
    C-contiguous arrays of the forward's dtype (the LSTM layer passes its own
    ``grads`` for dW and db).  dy, dhT, dcT as in :func:`lstm_backward`.
    """
    where = "lstm_backward_into"
    _check_cache(cache, where)
    names = ("dx", "dW", "db", "dh0", "dc0")
    T, N = cache.saved.hx.shape[:2]
    H = cache.W.shape[1]
    shapes = ((T, N, cache.W.shape[2] - H), cache.W.shape, cache.b.shape, (N, H), (N, H))
    arrays = unpack_grads(grads, names, where)
    checked = tuple(grad_buffer(a, name, shape, cache.W.dtype, where) for a, name, shape in zip(arrays, names, shapes))
    _backward(checked, dy, cache, dhT, dcT, check_finite, where)


def _check_cache(cache, where: str) -> None:
    if cache is None:
        raise ValueError(f"{where}: no cache; call lstm_forward first and pass the cache it returned")
    if not isinstance(cache, LSTMCache):
        raise TypeError(f"{where}: cache must be the LSTMCache returned by lstm_forward, got {type(cache).__name__}")


def _backward(grads, dy, cache, dhT, dcT, check_finite, where):
    saved, W, _b, lens, _acts, codes = cache
    T, N = saved.hx.shape[:2]
    H = W.shape[1]
    n_in = W.shape[2] - H
    dt = saved.hx.dtype
    dy = EMPTY3[dt] if dy is None else upstream(dy, (T, N, H), dt, where, check_finite)
    dhT = np.zeros((N, H), dt) if dhT is None else upstream(dhT, (N, H), dt, where, check_finite, "dhT")
    dcT = np.zeros((N, H), dt) if dcT is None else upstream(dcT, (N, H), dt, where, check_finite, "dcT")
    G = 4 * H
    TN = T * N
    plan_rec = products.recurrence_plan(N, H, G, dt)
    plan_dx = products.gemm_plan(TN, n_in, G, dt)
    plan_dw = products.gemm_plan(G, H + n_in, TN, dt)
    shapes = [(T, N, 4, H), (N, H), (N, H), (N, G)]
    shapes += [(size,) for size in products.packed_sizes(plan_dx, dt) + products.packed_sizes(plan_dw, dt)]
    shapes += [(products.recurrence_panels_size(plan_rec, G),), (products.packed_b_size(plan_rec, dt),),
               (products.recurrence_panels_size(plan_rec, H),)]
    check_alloc(where, dt, [("scratch", (sum(math.prod(s) for s in shapes),))])
    work = 2 * TN * G * (H + n_in)
    with scratch(dt, *shapes) as bufs:
        _jit.pick(klstm.lstm_backward, work)(
            klstm.LSTMGrads(*grads), klstm.LSTMScratch(*bufs), klstm.LSTMUpstream(dy, dhT, dcT),
            saved, W, lens, codes, plan_rec, plan_dx, plan_dw,
        )
