"""Stateless functional API: validate, allocate, call the kernels.

Every function checks its inputs first (``fastgrad._checks``; DESIGN section 4),
converts once to a C-contiguous float32/float64 array, allocates the outputs
and runs the kernel.  ``*_forward`` functions return ``(output, cache)``; the
cache is a small NamedTuple holding what the matching ``*_backward`` needs
(the forward never has to be recomputed).

Inputs are never modified.  dtype rule: the dtype of the first tensor
(``x`` / ``logits``) decides; the other tensors must have the same dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _jit
from ._checks import activation_code, as_array, check_alloc, check_shape
from ._workspace import scratch
from .kernels import activations as _act
from .kernels import dense as _dense
from .kernels import softmax as _softmax
from .kernels.activations import ACTIVATIONS

__all__ = [
    "ACTIVATIONS",
    "DenseCache",
    "dense_forward",
    "dense_backward",
    "activation_forward",
    "activation_backward",
    "softmax",
    "softmax_backward",
    "log_softmax",
    "log_softmax_backward",
    "cross_entropy",
]

_EMPTY = {np.dtype(np.float32): np.zeros(0, np.float32), np.dtype(np.float64): np.zeros(0, np.float64)}
_EMPTY2 = {dt: np.zeros((0, 0), dt) for dt in _EMPTY}


def _same_dtype(arr: np.ndarray, ref: np.ndarray, name: str, where: str, ref_name: str) -> None:
    if arr.dtype != ref.dtype:
        raise TypeError(f"{where}: {name} has dtype {arr.dtype} but {ref_name} has dtype {ref.dtype}; they must match")


# --------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------


class DenseCache(NamedTuple):
    """What dense_backward needs: the input, weights, pre-activations, activation."""

    x: np.ndarray
    W: np.ndarray
    b: np.ndarray | None
    z: np.ndarray
    activation: str


def dense_forward(x, W, b=None, activation="identity", *, check_finite=None):
    """y = sigma(b + W x) over a batch: x (N, n), W (m, n), b (m,) or None -> y (N, m).

    Returns ``(y, cache)``.  ``z`` (the pre-activation) is kept in the cache.
    """
    where = "dense_forward"
    code = activation_code(activation, where)
    x = as_array(x, "x", where, ndim=2, check_finite=check_finite)
    W = as_array(W, "W", where, ndim=2, check_finite=check_finite)
    _same_dtype(W, x, "W", where, "x")
    N, n = x.shape
    m = W.shape[0]
    if N == 0:
        raise ValueError(f"{where}: x has an empty batch (shape {x.shape})")
    if W.shape[1] != n:
        raise ValueError(f"{where}: W.shape[1]={W.shape[1]} does not match x.shape[1]={n}")
    if b is not None:
        b = as_array(b, "b", where, ndim=1, check_finite=check_finite)
        _same_dtype(b, x, "b", where, "x")
        check_shape(b, (m,), "b", where)
    check_alloc(where, x.dtype, [("y", (N, m)), ("z", (N, m))])
    z = np.empty((N, m), x.dtype)
    # identity: y is z, one array serves both (sigma' = 1 never reads z's values)
    y = np.empty((N, m), x.dtype) if code != 0 else z
    bias = _EMPTY[x.dtype] if b is None else b
    _jit.pick(_dense.dense_forward, N * m * n)(y, z, x, W, bias, code)
    return y, DenseCache(x, W, b, z, activation)


def dense_backward(dy, cache: DenseCache, *, check_finite=None):
    """Gradients of dense_forward: returns (dx, dW, db), db None when b was None.

    dL/dz = dy * sigma'(z);  db = sum_s dL/dz;  dW = sum_s dL/dz x^T;  dx = dL/dz W.
    """
    where = "dense_backward"
    if not isinstance(cache, DenseCache):
        raise TypeError(f"{where}: cache must be the DenseCache returned by dense_forward, got {type(cache).__name__}")
    x, W, b = cache.x, cache.W, cache.b
    dx = np.zeros_like(x)
    dW = np.zeros_like(W)
    db = np.zeros(W.shape[0], x.dtype) if b is not None else None
    _dense_backward_into(dx, dW, db, dy, cache, check_finite, where)
    return dx, dW, db


def _dense_backward_into(dx, dW, db, dy, cache: DenseCache, check_finite, where):
    """Accumulate (+=) the gradients into dx (x's shape), dW (W's shape), db ((m,) or None).

    The Dense layer passes its own grads, so nothing is allocated for dW / db.
    """
    x, W, _b, z, activation = cache
    dy = as_array(dy, "dy", where, dtype=x.dtype, check_finite=check_finite)
    check_shape(dy, z.shape, "dy", where)
    db = _EMPTY[x.dtype] if db is None else db
    N, n = x.shape
    m = W.shape[0]
    code = activation_code(activation, where)
    # scratch: dL/dz (unless sigma is the identity) and, for large shapes, the
    # transposed copies that let both products run in dot form
    dot = _dense.dot_form(N, n, m)
    shapes = [(N, m)] if code != 0 else []
    shapes += [(m, N), (n, N), (n, m)] if dot else []
    if shapes:
        check_alloc(where, x.dtype, [("scratch", (sum(int(np.prod(s)) for s in shapes),))])
    with scratch(x.dtype, *shapes) as bufs:
        if code == 0:
            dz = dy  # identity: sigma' = 1
        else:
            dz = bufs.pop(0)  # dL/dz = dy * sigma'(z), one element-wise pass (the kernel adds)
            dz.fill(0)
            _jit.pick(_act.activation_backward, 8 * dz.size)(dz.reshape(-1), dy.reshape(-1), z.reshape(-1), code)
        dzT, xT, Wt = bufs if dot else (_EMPTY2[x.dtype],) * 3
        _jit.pick(_dense.dense_backward, N * m * n)(dx, dW, db, dz, x, W, dzT, xT, Wt)


# --------------------------------------------------------------------------
# element-wise activation
# --------------------------------------------------------------------------


def activation_forward(x, activation, *, check_finite=None):
    """y = sigma(x) element-wise, any shape.  Returns (y, cache) with cache = (x, activation)."""
    where = "activation_forward"
    code = activation_code(activation, where)
    x = as_array(x, "x", where, check_finite=check_finite)
    y = np.empty_like(x)
    _jit.pick(_act.activation_forward, 8 * x.size)(y.reshape(-1), x.reshape(-1), code)
    return y, (x, activation)


def activation_backward(dy, cache, *, check_finite=None):
    """dx = dy * sigma'(x) element-wise, with the cache from activation_forward."""
    where = "activation_backward"
    x, activation = cache
    dy = as_array(dy, "dy", where, dtype=x.dtype, check_finite=check_finite)
    check_shape(dy, x.shape, "dy", where)
    dx = np.zeros_like(x)
    _jit.pick(_act.activation_backward, 8 * x.size)(dx.reshape(-1), dy.reshape(-1), x.reshape(-1), activation_code(activation, where))
    return dx


# --------------------------------------------------------------------------
# softmax family
# --------------------------------------------------------------------------


def _axis(axis, ndim: int, where: str) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{where}: axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{where}: axis={axis} is out of range for an array with {ndim} dimensions")
    return int(axis) % ndim


def _rows(x: np.ndarray, axis: int) -> np.ndarray:
    """View/copy of x with the softmax axis last, as a C-contiguous (R, n) array."""
    moved = np.moveaxis(x, axis, -1)
    return np.ascontiguousarray(moved).reshape(-1, x.shape[axis])


def _unrows(rows: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    out = np.moveaxis(rows.reshape(moved_shape), -1, axis)
    return np.ascontiguousarray(out)


def _row_op(kern, where, arrays, names, axis, check_finite):
    """Run a row kernel (out, *inputs) over `axis` of same-shaped arrays."""
    ref = as_array(arrays[0], names[0], where, check_finite=check_finite)
    if ref.ndim == 0:
        raise ValueError(f"{where}: {names[0]} must have at least 1 dimension, got a scalar")
    ax = _axis(axis, ref.ndim, where)
    if ref.shape[ax] == 0:
        raise ValueError(f"{where}: {names[0]} has length 0 along axis {axis}")
    ins = [ref]
    for arr, name in zip(arrays[1:], names[1:]):
        a = as_array(arr, name, where, dtype=ref.dtype, check_finite=check_finite)
        check_shape(a, ref.shape, name, where)
        ins.append(a)
    if ref.size == 0:
        return np.empty_like(ref)
    if ax == ref.ndim - 1:  # already rows: no moveaxis copies (they cost ~5 us on small inputs)
        n = ref.shape[ax]
        out = np.empty_like(ref)
        _jit.pick(kern, 16 * ref.size)(out.reshape(-1, n), *[a.reshape(-1, n) for a in ins])
        return out
    rows = [_rows(a, ax) for a in ins]
    out = np.empty_like(rows[0])
    _jit.pick(kern, 16 * ref.size)(out, *rows)
    return _unrows(out, ref.shape, ax)


def softmax(x, axis=-1, *, check_finite=None):
    """y_k = e^{x_k - max x} / sum_j e^{x_j - max x} along ``axis`` (stable for any logits)."""
    return _row_op(_softmax.softmax_forward, "softmax", (x,), ("x",), axis, check_finite)


def softmax_backward(dy, y, axis=-1, *, check_finite=None):
    """dx_j = y_j (dy_j - sum_k dy_k y_k): the softmax VJP (= JVP, J is symmetric), O(n).

    Needs only the softmax output ``y``; works on any shape along ``axis``.
    """
    return _row_op(_softmax.softmax_backward, "softmax_backward", (dy, y), ("dy", "y"), axis, check_finite)


def log_softmax(x, axis=-1, *, check_finite=None):
    """x_k - log sum_j e^{x_j} along ``axis`` (stable log-sum-exp)."""
    return _row_op(_softmax.log_softmax_forward, "log_softmax", (x,), ("x",), axis, check_finite)


def log_softmax_backward(dy, out, axis=-1, *, check_finite=None):
    """dx_j = dy_j - softmax_j sum_k dy_k, from the log_softmax output ``out``."""
    return _row_op(_softmax.log_softmax_backward, "log_softmax_backward", (dy, out), ("dy", "out"), axis, check_finite)


def cross_entropy(logits, target, *, reduction="mean", check_finite=None):
    """Cross-entropy from logits, fused with log-softmax; returns (loss, dlogits).

    logits (N, C).  target either integer class labels (N,) in [0, C) or
    probabilities (N, C) of the logits' float dtype.  ``reduction`` "mean"
    (default, as PyTorch) or "sum".  ``dlogits`` is the gradient of the
    returned loss: (softmax(logits) - onehot) / N for labels and the mean.
    """
    where = "cross_entropy"
    logits = as_array(logits, "logits", where, ndim=2, check_finite=check_finite)
    N, C = logits.shape
    if N == 0 or C == 0:
        raise ValueError(f"{where}: logits must be non-empty (N, C), got shape {logits.shape}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{where}: reduction must be 'mean' or 'sum', got {reduction!r}")
    scale = logits.dtype.type(1.0 / N if reduction == "mean" else 1.0)
    losses = np.empty(N, logits.dtype)
    dlogits = np.empty_like(logits)
    labels = _labels_or_none(target, N, C, where)
    if labels is not None:
        _jit.pick(_softmax.cross_entropy_labels, 16 * logits.size)(losses, dlogits, logits, labels, scale)
    else:
        p = as_array(target, "target", where, dtype=logits.dtype, check_finite=check_finite)
        check_shape(p, (N, C), "target", where)
        if (p < 0).any():
            raise ValueError(f"{where}: target probabilities must be >= 0 (found {p.min()})")
        _jit.pick(_softmax.cross_entropy_probs, 16 * logits.size)(losses, dlogits, logits, p, scale)
    total = losses.sum(dtype=np.float64)
    loss = float(total / N if reduction == "mean" else total)
    return loss, dlogits


def _labels_or_none(target, N: int, C: int, where: str):
    """int64 labels if ``target`` holds integer class labels, else None (probabilities)."""
    if target is None:
        raise TypeError(f"{where}: target must be int labels (N,) or probabilities (N, C), got None")
    arr = target if isinstance(target, np.ndarray) else None
    if arr is None:
        if isinstance(target, (str, bytes)):
            raise TypeError(f"{where}: target must be an array, got {type(target).__name__}")
        try:
            arr = np.asarray(target)
        except (ValueError, TypeError):
            raise TypeError(f"{where}: target could not be read as an array") from None
    if arr.dtype.kind not in "iu":
        if arr.dtype == np.bool_:
            raise TypeError(f"{where}: target must be int labels or float probabilities, got dtype bool")
        return None
    if arr.ndim != 1 or arr.shape[0] != N:
        raise ValueError(f"{where}: integer target must have shape ({N},), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= C):
        raise ValueError(f"{where}: labels must be in [0, {C}), got values in [{arr.min()}, {arr.max()}]")
    return np.ascontiguousarray(arr, dtype=np.int64)


# --------------------------------------------------------------------------
# convolution and pooling (fastgrad/_functional_conv.py), LSTM (_functional_lstm.py)
# --------------------------------------------------------------------------
from ._functional_conv import *  # noqa: E402,F401,F403
from ._functional_conv import __all__ as _conv_all  # noqa: E402
from ._functional_lstm import *  # noqa: E402,F401,F403
from ._functional_lstm import __all__ as _lstm_all  # noqa: E402

__all__ += _conv_all + _lstm_all
