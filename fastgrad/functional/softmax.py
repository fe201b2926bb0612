"""Softmax family, functional: softmax and its O(n) VJP, log-softmax, fused cross-entropy (kernels.softmax).

Every function works along any ``axis`` of an array of any shape; the kernels
see C-contiguous rows (the axis is moved last, without a copy when it already is).
"""

from __future__ import annotations

import numpy as np

from .. import _jit
from .._checks import as_array, check_shape
from ..kernels import softmax as ksoftmax
from .common import grad_buffer, unpack_grads


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
    return _row_op(ksoftmax.softmax_forward, "softmax", (x,), ("x",), axis, check_finite)


def softmax_backward(dy, y, axis=-1, *, check_finite=None):
    """dx_j = y_j (dy_j - sum_k dy_k y_k): the softmax VJP (= JVP, J is symmetric), O(n).

    Needs only the softmax output ``y``; works on any shape along ``axis``.
    """
    return _row_op(ksoftmax.softmax_backward, "softmax_backward", (dy, y), ("dy", "y"), axis, check_finite)


def log_softmax(x, axis=-1, *, check_finite=None):
    """x_k - log sum_j e^{x_j} along ``axis`` (stable log-sum-exp)."""
    return _row_op(ksoftmax.log_softmax_forward, "log_softmax", (x,), ("x",), axis, check_finite)


def log_softmax_backward(dy, out, axis=-1, *, check_finite=None):
    """dx_j = dy_j - softmax_j sum_k dy_k, from the log_softmax output ``out``."""
    return _row_op(ksoftmax.log_softmax_backward, "log_softmax_backward", (dy, out), ("dy", "out"), axis, check_finite)


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
    labels = labels_or_none(target, N, C, where)
    if labels is not None:
        _jit.pick(ksoftmax.cross_entropy_labels, 16 * logits.size)(losses, dlogits, logits, labels, scale)
    else:
        p = as_array(target, "target", where, dtype=logits.dtype, check_finite=check_finite)
        check_shape(p, (N, C), "target", where)
        if (p < 0).any():
            raise ValueError(f"{where}: target probabilities must be >= 0 (found {p.min()})")
        _jit.pick(ksoftmax.cross_entropy_probs, 16 * logits.size)(losses, dlogits, logits, p, scale)
    total = losses.sum(dtype=np.float64)
    loss = float(total / N if reduction == "mean" else total)
    return loss, dlogits


def labels_or_none(target, N: int, C: int, where: str):
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


def softmax_backward_into(grads, dy, y, axis=-1, *, check_finite=None) -> None:
    """Accumulate (``+=``) the softmax VJP ``y_j (dy_j - sum_k dy_k y_k)`` into ``grads`` = (dx,)."""
    _accumulate(grads, softmax_backward(dy, y, axis, check_finite=check_finite), "softmax_backward_into")


def log_softmax_backward_into(grads, dy, out, axis=-1, *, check_finite=None) -> None:
    """Accumulate (``+=``) the log-softmax VJP ``dy_j - softmax_j sum_k dy_k`` into ``grads`` = (dx,)."""
    _accumulate(grads, log_softmax_backward(dy, out, axis, check_finite=check_finite), "log_softmax_backward_into")


def _accumulate(grads, dx: np.ndarray, where: str) -> None:
    # the row kernels overwrite; the sum goes into the caller's buffer in one pass
    (buf,) = unpack_grads(grads, ("dx",), where)
    buf = grad_buffer(buf, "dx", dx.shape, dx.dtype, where)
    buf += dx
