"""Recycled results (fastgrad._workspace.recycled): an array a call returned is reused only
when nobody holds it, and a reused array never leaks what it held before."""

import threading

import numpy as np
import pytest

import fastgrad.functional as F
import fastgrad.functional.conv as FCONV
from fastgrad import _workspace

# (T, N, I, H) whose y, hx, z, a, c, sh and dW are above RECYCLE_MIN_BYTES in float64
T, N, I, H = 12, 16, 5, 96


def _lstm_inputs(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, N, I)).astype(dtype)
    W = (0.3 * rng.standard_normal((4, H, H + I))).astype(dtype)
    b = (0.1 * rng.standard_normal((4, H))).astype(dtype)
    dy = rng.standard_normal((T, N, H)).astype(dtype)
    return x, W, b, dy


def test_the_pool_recognises_an_array_only_it_holds():
    assert _workspace._FREE_COUNT > 0
    shape = (_workspace.RECYCLE_MIN_BYTES // 8 + 1,)
    a = _workspace.recycled(shape, np.float64)
    address = a.ctypes.data
    b = _workspace.recycled(shape, np.float64)
    assert b.ctypes.data != address  # a is still held
    del a
    c = _workspace.recycled(shape, np.float64)
    assert c.ctypes.data == address  # nobody held it: reused
    view = c[1:]
    del c
    d = _workspace.recycled(shape, np.float64)
    assert not np.shares_memory(d, view)  # a view keeps its base held


def test_small_and_huge_arrays_are_always_fresh():
    small = (_workspace.RECYCLE_MIN_BYTES // 8 - 1,)
    huge = (_workspace.RECYCLE_MAX_ARRAY_BYTES // 8 + 1,)
    _workspace.release()
    for shape in (small, huge):
        a = _workspace.recycled(shape, np.float64)
        assert a.shape == shape
        del a
    pool = getattr(_workspace._local, "pool", None)
    assert pool is None or not pool.arrays


def test_the_pool_stays_within_its_byte_bound(monkeypatch):
    monkeypatch.setattr(_workspace, "RECYCLE_MAX_BYTES", 4 * _workspace.RECYCLE_MIN_BYTES)
    _workspace.release()
    held = [_workspace.recycled((_workspace.RECYCLE_MIN_BYTES // 8 + k,), np.float64) for k in range(10)]
    pool = _workspace._local.pool
    assert pool.nbytes <= _workspace.RECYCLE_MAX_BYTES
    assert pool.nbytes == sum(a.nbytes for arrays in pool.arrays.values() for a in arrays)
    assert len(held) == 10  # every request was served, kept or not
    _workspace.release()
    assert pool.nbytes == 0 and not pool.arrays


def test_lstm_outputs_held_by_the_caller_are_never_overwritten():
    x1, W, b, dy = _lstm_inputs(0)
    x2 = _lstm_inputs(1)[0]
    (y1, (h1, c1)), cache1 = F.lstm_forward(x1, W, b)
    y1_copy, h1_copy = y1.copy(), h1.copy()
    grads1 = [g.copy() for g in F.lstm_backward(dy, cache1)]
    last = y1[-1]  # only a view of y1 stays held
    del y1
    (y2, _), cache2 = F.lstm_forward(x2, W, b)
    assert not np.shares_memory(y2, last)
    for old, new in zip(cache1.saved, cache2.saved):
        assert not np.shares_memory(old, new)
    np.testing.assert_array_equal(last, y1_copy[-1])
    np.testing.assert_array_equal(h1, h1_copy)
    # the first cache still gives the first gradients after the second forward
    for g, ref in zip(F.lstm_backward(dy, cache1), grads1):
        np.testing.assert_array_equal(g, ref)


def test_lstm_reuses_dropped_arrays_and_overwrites_every_value():
    x, W, b, dy = _lstm_inputs(2)
    (y, (hT, cT)), cache = F.lstm_forward(x, W, b)
    grads = F.lstm_backward(dy, cache)
    want_y, want_hT, want_grads = y.copy(), hT.copy(), [g.copy() for g in grads]
    addresses = {a.ctypes.data for a in (y, *cache.saved, *grads) if a.nbytes >= _workspace.RECYCLE_MIN_BYTES}
    for arr in (y, hT, cT, *cache.saved, *grads):
        arr.fill(np.nan)  # what a reused array held before must not reach the results
    del y, hT, cT, cache, grads, arr
    (y, (hT, _)), cache = F.lstm_forward(x, W, b)
    grads = F.lstm_backward(dy, cache)
    reused = {a.ctypes.data for a in (y, *cache.saved, *grads)} & addresses
    assert len(reused) >= 6  # y, hx, z, a, c, sh, dW came back from the pool
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(hT, want_hT)
    for g, ref in zip(grads, want_grads):
        np.testing.assert_array_equal(g, ref)


@pytest.mark.parametrize("op", ["dense", "conv"])
def test_dense_and_conv_results_reused_only_when_dropped(op):
    rng = np.random.default_rng(3)
    if op == "dense":
        x = rng.standard_normal((256, 80))
        w = rng.standard_normal((96, 80))
        bias = rng.standard_normal(96)
        dy = rng.standard_normal((256, 96))

        def run():
            y, cache = F.dense_forward(x, w, bias, "tanh")
            return y, F.dense_backward(dy, cache)
    else:
        x = rng.standard_normal((4, 3, 40, 40))
        w = rng.standard_normal((8, 3, 3, 3))
        bias = rng.standard_normal(8)
        dy = rng.standard_normal((4, 8, 40, 40))

        def run():
            y, cache = F.conv_forward(x, w, bias, padding=1, activation="tanh")
            return y, F.conv_backward(dy, cache)
    y1, grads1 = run()
    keep = [y1.copy(), *(g.copy() for g in grads1)]
    y2, grads2 = run()  # the first results are still held
    assert not np.shares_memory(y1, y2) and not np.shares_memory(grads1[0], grads2[0])
    for arr, ref in zip((y1, *grads1), keep):
        np.testing.assert_array_equal(arr, ref)
    y1.fill(np.nan)
    grads1[0].fill(np.nan)
    address = y1.ctypes.data
    del y1, grads1, arr
    y3, grads3 = run()
    assert y3.ctypes.data == address  # the dropped output came back, NaN-filled, and was overwritten
    for arr, ref in zip((y3, *grads3), keep):
        np.testing.assert_array_equal(arr, ref)


@pytest.mark.parametrize("padding, stride, form", [(0, 1, None), (2, 1, None), (1, 2, "rows"), (1, 2, "products")])
def test_conv_temporaries_holding_nan_are_fully_overwritten(padding, stride, form, monkeypatch):
    """Conv takes its temporaries from the pool uninitialised (stride 1: the padded x, the wide dL/dZ,
    the wide dx; other strides: the columns of x, the product's output, dL/dZ moved to (M, N P),
    the columns of dL/dX and the packing buffers): after every free array in the pool is NaN-filled,
    a forward and backward still give bitwise the results of an empty pool (a kernel that skipped
    a zero of the dropped columns, the margins or the padding taps would read NaN).  Stride 2 in both
    forms of the im2col kernels: 7 output channels run row by row, unless FEW_CHANNELS is below 7."""
    if form == "products":
        monkeypatch.setattr(FCONV, "FEW_CHANNELS", 0)
        monkeypatch.setattr(FCONV, "_launches", FCONV._launches.__wrapped__)  # not remembered
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6, 30, 30))
    w = rng.standard_normal((7, 6, 3, 3))
    bias = rng.standard_normal(7)

    def run(seed):
        y, cache = F.conv_forward(x, w, bias, stride=stride, padding=padding, activation="tanh")
        dy = np.random.default_rng(seed).standard_normal(y.shape)
        return [y.copy(), *(g.copy() for g in F.conv_backward(dy, cache))]

    _workspace.release()
    want = run(1)
    run(2)  # the pool now holds every buffer of this shape, free
    poisoned = 0
    for arrays in _workspace._local.pool.arrays.values():  # nobody holds them after run() returned
        for arr in arrays:
            arr.fill(np.nan)
            poisoned += 1
    # at least xp, the wide dL/dZ, the wide dx and dx; cols, dL/dZ as (M, N P) and dcols (+ packing buffers)
    assert poisoned >= (3 if form == "rows" else 4)
    got = run(1)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_each_thread_has_its_own_pool():
    shape = (_workspace.RECYCLE_MIN_BYTES // 8 + 7,)
    mine = _workspace.recycled(shape, np.float64)
    address = mine.ctypes.data
    del mine
    seen = []

    def other():
        seen.append(_workspace.recycled(shape, np.float64).ctypes.data)

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert seen and seen[0] != address  # the other thread cannot take this thread's array
    assert _workspace.recycled(shape, np.float64).ctypes.data == address


def test_release_memory_forgets_the_kept_arrays():
    import fastgrad as fg

    x, W, b, _ = _lstm_inputs(4)
    (y, _), cache = F.lstm_forward(x, W, b)
    kept = sum(a.nbytes for a in (y, *cache.saved) if a.nbytes >= _workspace.RECYCLE_MIN_BYTES)
    del y, cache
    assert fg.release_memory() >= kept
    assert _workspace._local.pool.nbytes == 0 and not _workspace._local.pool.arrays
    assert fg.release_memory() == 0
