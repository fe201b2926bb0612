"""Reusable per-thread scratch memory for the functional layer.

Backward passes need temporaries that never leave the call (dense: dL/dz and
the transposed copies of dz, x and W).  Fresh ``np.empty`` arrays of a few MB
each are returned to the OS when freed (glibc trims the heap and maps large
blocks), so every call pays page faults on them again: about 1 ms of the
(128, 512, 512) float64 dense backward (fresh 6.2 ms vs reused 4.4 ms, 2
threads, same process).  :func:`scratch` hands out views of one buffer per
Python thread instead, grown to the largest request seen and kept.

Rules that keep it safe: a scratch array is only valid inside its ``with``
block and must never be returned; one ``with`` per call (a nested request,
which would overlap the outer one, gets fresh arrays instead); requests above
:data:`MAX_BYTES` are allocated fresh so a single huge call does not pin
memory for the life of the thread.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

#: Largest request served from the per-thread buffer (bytes).
MAX_BYTES = 256 << 20

_ALIGN = 64  # cache line: each view starts on its own line
_local = threading.local()


class _Buffer:
    """One thread's buffer: the bytes and the offset of their first 64-byte boundary."""

    __slots__ = ("bytes", "start", "busy")

    def __init__(self, nbytes: int):
        self.bytes = np.empty(nbytes + _ALIGN, np.uint8)
        self.start = -self.bytes.ctypes.data % _ALIGN  # ctypes is slow (~5 us): once per buffer
        self.busy = False


class _Scratch:
    """The context manager :func:`scratch` returns (a class: a generator-based one cost ~10 us a call)."""

    __slots__ = ("dtype", "shapes", "buffer")

    def __init__(self, dtype, shapes):
        self.dtype = np.dtype(dtype)
        self.shapes = shapes
        self.buffer = None

    def __enter__(self) -> list:
        dtype = self.dtype
        shapes = self.shapes
        counts = [math.prod(s) for s in shapes]
        itemsize = dtype.itemsize
        sizes = [-(-c * itemsize // _ALIGN) * _ALIGN for c in counts]
        total = sum(sizes)
        buffer = getattr(_local, "buffer", None)
        if not shapes or (buffer is not None and buffer.busy) or total > MAX_BYTES:
            return [np.empty(s, dtype) for s in shapes]
        if buffer is None or buffer.bytes.size < total + _ALIGN:
            buffer = _local.buffer = _Buffer(total)
        buffer.busy = True
        self.buffer = buffer
        return _carve(buffer, dtype, shapes, counts, sizes)

    def __exit__(self, *exc) -> None:
        if self.buffer is not None:
            self.buffer.busy = False


def _carve(buffer: _Buffer, dtype, shapes, counts, sizes) -> list:
    """Views of ``shapes`` laid out one after another in ``buffer``, each on its own cache line."""
    itemsize = dtype.itemsize
    start = buffer.start
    raw = buffer.bytes
    views = []
    for shape, count, size in zip(shapes, counts, sizes):
        views.append(raw[start:start + count * itemsize].view(dtype).reshape(shape))
        start += size
    return views


def scratch(dtype, *shapes) -> _Scratch:
    """Uninitialised C-contiguous arrays of ``shapes``, reused across calls on this thread (a ``with`` block)."""
    return _Scratch(dtype, shapes)


#: Largest scratch a remembered call keeps for itself (bytes): see :func:`owned`.
OWN_MAX_BYTES = 1 << 20


def owned(dtype, *shapes):
    """Scratch arrays a remembered call keeps across calls (one fresh aligned buffer), or None.

    A training step repeats each call with the same shapes; a call that keeps
    its scratch skips the pool's bookkeeping on every step.  None when the
    arrays total more than :data:`OWN_MAX_BYTES`: such calls are long enough to
    take the pool's (``scratch``) and not pin memory per shape.  The owner
    must use them from one thread only.
    """
    dtype = np.dtype(dtype)
    counts = [math.prod(s) for s in shapes]
    sizes = [-(-c * dtype.itemsize // _ALIGN) * _ALIGN for c in counts]
    if sum(sizes) > OWN_MAX_BYTES:
        return None
    return _carve(_Buffer(max(1, sum(sizes))), dtype, shapes, counts, sizes)


# ---------------------------------------------------------------------------
# Recycled results: arrays a call returns, reused once nobody holds them.
#
# A forward pass returns its output and the tensors it saves for the backward
# (the LSTM's gates and states: 5 MB at (T, N, I, H) = (50, 32, 32, 64) float32).
# Fresh arrays of that size are mapped from the OS and unmapped when freed,
# depending on glibc's history of frees, so a loop of calls can pay a page
# fault per 4 KiB on every call: F.lstm_forward at that shape took 3.8 ms
# with 1220 faults per call and 1.7 ms with none, in the same process (AMD
# EPYC Zen 3, 2 threads).  The pool keeps the arrays it handed out and hands
# one out again only when its reference count shows that the pool holds the
# only reference: no variable, container, cache or view of the caller can
# still see it, so the reuse cannot be observed.  An array still held (the
# previous step's output, a cache kept by a layer) is simply not reused.
# ---------------------------------------------------------------------------

#: arrays smaller than this are never kept (bytes): glibc's heap serves them without page
#: faults (its default mmap threshold), and np.empty is cheaper than the pool's bookkeeping
RECYCLE_MIN_BYTES = 128 << 10
#: arrays larger than this are never kept (bytes): a call that big amortises its page faults
RECYCLE_MAX_ARRAY_BYTES = 16 << 20
#: bytes of arrays one thread's pool keeps at most (in use or free); beyond, the least recently used shapes are dropped
RECYCLE_MAX_BYTES = 128 << 20
#: arrays kept per (shape, dtype): a call's own arrays of that shape times the calls still held
RECYCLE_PER_SHAPE = 8


def _first_free(arrays: list, free_count: int) -> int:
    """Index of the first array whose reference count is ``free_count`` (held by ``arrays`` only), or -1."""
    for i in range(len(arrays)):
        if sys.getrefcount(arrays[i]) <= free_count:
            return i
    return -1


def _calibrate() -> int:
    """The reference count :func:`_first_free` sees on an array only its list holds (0: pool disabled).

    Measured rather than assumed, so a Python whose frames count references
    differently still gets a correct threshold; checked against an array with
    one more reference, which must not count as free.
    """
    for count in range(1, 8):
        if _first_free([np.empty(1)], count) == 0:
            held = np.empty(1)  # this name is the one more reference
            return count if _first_free([held], count) == -1 else 0
    return 0


_FREE_COUNT = _calibrate()


class _Pool:
    """One thread's recycled arrays: (shape, dtype char) -> arrays, in order of last use."""

    __slots__ = ("arrays", "nbytes")

    def __init__(self):
        self.arrays = {}
        self.nbytes = 0


def recycled(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape``, reused from an earlier call when nobody holds it.

    For arrays a call returns (outputs, saved tensors): unlike :func:`scratch`
    they may be kept by the caller for as long as it likes.  Convolution also
    takes its temporaries from here (dL/dZ, the wide buffers), because they are
    made at different points of one call and :func:`scratch` serves one request
    per call; dropped when the call returns, they are free for the next.  Arrays outside
    [:data:`RECYCLE_MIN_BYTES`, :data:`RECYCLE_MAX_ARRAY_BYTES`] are always fresh.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if not _FREE_COUNT or nbytes < RECYCLE_MIN_BYTES or nbytes > RECYCLE_MAX_ARRAY_BYTES:
        return np.empty(shape, dtype)
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = _Pool()
    key = (tuple(shape), dtype.char)
    arrays = pool.arrays.pop(key, None)
    if arrays is None:
        arrays = []
    pool.arrays[key] = arrays  # most recently used last
    i = _first_free(arrays, _FREE_COUNT)
    if i >= 0:
        return arrays[i]
    arr = np.empty(shape, dtype)
    if len(arrays) >= RECYCLE_PER_SHAPE:
        return arr
    arrays.append(arr)
    pool.nbytes += nbytes
    while pool.nbytes > RECYCLE_MAX_BYTES:
        oldest = next(iter(pool.arrays))
        pool.nbytes -= sum(a.nbytes for a in pool.arrays.pop(oldest))
    return arr


def recycled_zeros(shape: tuple, dtype) -> np.ndarray:
    """:func:`recycled`, filled with zeros."""
    arr = recycled(shape, dtype)
    arr.fill(0)
    return arr


def release() -> int:
    """Forget this thread's recycled arrays and its scratch buffer; returns the bytes the pool had kept.

    Arrays still held elsewhere live on; the rest go back to the allocator.  A
    scratch buffer in use (inside a ``with scratch(...)`` block) is kept.
    """
    released = 0
    pool = getattr(_local, "pool", None)
    if pool is not None:
        released += pool.nbytes
        pool.arrays.clear()
        pool.nbytes = 0
    buffer = getattr(_local, "buffer", None)
    if buffer is not None and not buffer.busy:
        released += buffer.bytes.nbytes
        _local.buffer = None
    return released
