"""Glue shared by the functional modules: dtype agreement, empty stand-in arrays, the grads argument.

Validation of single arrays and scalars lives in :mod:`fastgrad._checks`
(shared with the layers and optimizers); this module holds what only the
functional ops need.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from .. import _jit
from .._checks import as_array

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _empties(shape) -> dict:
    # writable (numba compiles read-only arrays as another type); zero-size, so nothing is ever written
    return {dt: np.zeros(shape, dt) for dt in _DTYPES}


#: zero-size stand-ins the kernels read as "absent" (no bias, no upstream gradient, axpy form)
EMPTY1 = _empties((0,))
EMPTY2 = _empties((0, 0))
EMPTY3 = _empties((0, 0, 0))
NO_BIAS3 = _empties((0, 1, 1))
NO_DX4 = _empties((0, 1, 1, 1))  # conv's im2col backward: no dL/dX wanted (col2im skipped)


def same_dtype(arr: np.ndarray, ref: np.ndarray, name: str, where: str, ref_name: str = "x") -> None:
    """Raise TypeError unless ``arr`` has the dtype of ``ref`` (the op's first tensor decides)."""
    if arr.dtype != ref.dtype:
        raise TypeError(f"{where}: {name} has dtype {arr.dtype} but {ref_name} has dtype {ref.dtype}; they must match")


def grad_buffer(buf, name: str, shape: tuple, dtype, where: str, optional: bool = False):
    """Check one array of an ``op_backward_into`` grads argument: it is accumulated into in place.

    It must be a writable C-contiguous ndarray of exactly ``shape`` and ``dtype``
    (no conversion: a converted copy would silently receive the gradient).
    ``optional``: None is allowed (returned as None, e.g. db of a layer without bias).
    """
    if buf is None:
        if optional:
            return None
        raise TypeError(f"{where}: grads.{name} must be an array of shape {shape}, got None")
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{where}: grads.{name} must be a numpy array (accumulated in place), got {type(buf).__name__}")
    if buf.dtype != np.dtype(dtype):
        raise TypeError(f"{where}: grads.{name} has dtype {buf.dtype}, expected {np.dtype(dtype)}")
    if buf.shape != tuple(shape):
        raise ValueError(f"{where}: grads.{name} must have shape {tuple(shape)}, got {buf.shape}")
    if not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError(f"{where}: grads.{name} must be a writable C-contiguous array (it is accumulated in place)")
    return buf


def upstream(dy, shape: tuple, dtype, where: str, check_finite, name: str = "dy") -> np.ndarray:
    """The upstream gradient as a C array of ``dtype``, checked against the forward output's shape."""
    dy = as_array(dy, name, where, dtype=dtype, check_finite=check_finite)
    if dy.shape != tuple(shape):
        raise ValueError(f"{where}: {name} must have shape {tuple(shape)} (the forward output), got {dy.shape}")
    return dy


def check_cache(cache, kind: type, forward: str, where: str) -> None:
    """Raise TypeError unless ``cache`` is the ``kind`` NamedTuple that ``forward`` returns."""
    if not isinstance(cache, kind):
        raise TypeError(f"{where}: cache must be the {kind.__name__} returned by {forward}, got {type(cache).__name__}")


def unpack_grads(grads, names: tuple, where: str) -> tuple:
    """The arrays of a grads argument: a tuple/list in ``names`` order or an object with those attributes."""
    if isinstance(grads, (tuple, list)):
        if len(grads) != len(names):
            raise ValueError(f"{where}: grads must hold {len(names)} arrays ({', '.join(names)}), got {len(grads)}")
        return tuple(grads)
    if all(hasattr(grads, n) for n in names):
        return tuple(getattr(grads, n) for n in names)
    raise TypeError(f"{where}: grads must be a tuple ({', '.join(names)}), got {type(grads).__name__}")


class Launch:
    """One kernel launch of a remembered call: the twin :func:`fastgrad._jit.pick` chooses for
    ``work``, resolved on first use to the overload for its arguments' exact types
    (:func:`fastgrad._jit.exact`), so later calls skip the pick and numba's typing."""

    __slots__ = ("kernel", "work", "fn")

    def __init__(self, kernel, work: int):
        self.kernel = kernel
        self.work = work
        self.fn = None

    def __call__(self, *args):
        fn = self.fn
        if fn is None:
            fn = self.fn = _jit.exact(_jit.pick(self.kernel, self.work), args)
        fn(*args)


def call_key(*shape_key) -> tuple:
    """The memory key of a remembered call: its shapes and flags, the calling thread (which owns the
    call's scratch) and what pick() reads besides the work (:func:`fastgrad._jit.pick_state`)."""
    return shape_key + (threading.get_ident(), _jit.pick_state())


#: every memory of remembered calls (see :func:`remembered`)
_MEMORIES: list = []


#: remembered calls per kind; each may keep up to _workspace.OWN_MAX_BYTES of scratch, so a
#: workload of many shapes pins at most this many MiB per kind (a training step needs one or two)
REMEMBERED_CALLS = 32


def remembered(build):
    """``build(key)`` remembered per key (a :func:`call_key`): the calls a training step repeats, made once.

    The least recently used of more than :data:`REMEMBERED_CALLS` keys is dropped.
    """
    memory = lru_cache(maxsize=REMEMBERED_CALLS)(build)
    _MEMORIES.append(memory)
    return memory


def forget_calls() -> None:
    """Drop every remembered call, so the next calls pick their kernels again (a tool that wraps
    ``_jit.pick`` to watch the launches, such as benchmarks.overhead, calls it before and after)."""
    for memory in _MEMORIES:
        memory.cache_clear()
