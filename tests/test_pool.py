"""Pooling: forward/backward against the NumPy oracle, finite differences on tie-free
points, tie and NaN rules, sentinel outputs, threads, errors and the layers."""

from __future__ import annotations

import json

import numba
import numpy as np
import pytest
from fd import assert_close, numeric_grad

import fastgrad.functional as FC
from fastgrad.functional import geometry as FG
from fastgrad.kernels import pool as KP
from fastgrad.layers.pool import AvgPool1D, AvgPool2D, MaxPool1D, MaxPool2D
from fastgrad.reference import pool_ref

FUNCS = {"max": (FC.max_pool_forward, FC.max_pool_backward), "avg": (FC.avg_pool_forward, FC.avg_pool_backward)}

# (spatial, kernel_size, stride, padding)
CASES = [
    ((6, 6), 2, None, 0),
    ((7, 5), 3, 2, 1),
    ((5, 8), (2, 3), (1, 2), (1, 1)),
    ((4, 4), 3, 1, 1),
    ((1, 7), (1, 3), (1, 2), (0, 1)),
    ((5, 5), 5, 1, 2),
    ((9, 7), (3, 2), (3, 1), (1, 0)),
    ((8,), 2, None, 0),
    ((9,), 3, 2, 1),
    ((5,), 4, 1, 2),
    ((1,), 1, 1, 0),
    ((10,), 3, 3, 0),
]


def tie_free(shape, rng):
    """Distinct values 0.1 apart: no ties, and a +-1e-6 step never changes a window's maximum."""
    n = int(np.prod(shape))
    return (0.1 * rng.permutation(n) - 0.05 * n).reshape(shape)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("spatial, k, s, p", CASES)
def test_pool_forward_backward(kind, spatial, k, s, p):
    rng = np.random.default_rng(0)
    fwd, bwd = FUNCS[kind]
    x = tie_free((2, 3) + spatial, rng)
    nd = len(spatial)
    kt, st, pt = FG.pool_options(nd, k, s, p, "t")
    y, cache = fwd(x, k, s, p)
    y_ref, back_ref = pool_ref(x, kt, st, pt, kind)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-13)
    u = rng.standard_normal(y.shape)
    dx = bwd(u, cache)
    np.testing.assert_allclose(dx, back_ref(u), rtol=1e-13, atol=1e-13)
    assert_close(dx, numeric_grad(lambda: float(np.sum(u * fwd(x, k, s, p)[0])), x), "dx")


def test_max_pool_ties_go_to_first_index():
    x = np.ones((1, 1, 2, 4))
    _y, cache = FC.max_pool_forward(x, 2)
    dx = FC.max_pool_backward(np.array([[[[1.0, 2.0]]]]), cache)
    np.testing.assert_array_equal(dx[0, 0], [[1, 0, 2, 0], [0, 0, 0, 0]])


def test_max_pool_padding_never_wins_and_nan_propagates():
    x = -np.ones((1, 1, 3, 3))  # all negative: zero padding would win, -inf does not
    y, _ = FC.max_pool_forward(x, 3, 1, 1)
    assert (y == -1).all()
    x = np.full((1, 1, 2, 2), -np.inf)
    y, cache = FC.max_pool_forward(x, 2, check_finite=False)
    assert y[0, 0, 0, 0] == -np.inf
    dx = FC.max_pool_backward(np.ones((1, 1, 1, 1)), cache)
    assert dx[0, 0, 0, 0] == 1 and dx.sum() == 1
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    y, _ = FC.max_pool_forward(x, 2, check_finite=False)
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1, 1])


def test_avg_pool_counts_padding_in_divisor():
    y, _ = FC.avg_pool_forward(np.ones((1, 1, 2, 2)), 3, 1, 1)
    np.testing.assert_allclose(y[0, 0], np.full((2, 2), 4 / 9))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_sentinel_threads_float32(kind, threads):
    rng = np.random.default_rng(5)
    x = tie_free((4, 8, 21, 19), rng)
    geo = FG.pool_geometry(x.shape, (3, 2), (2, 2), (1, 1), "t")
    shape = (4, 8, 11, 10)
    assert (geo.Ho, geo.Wo) == shape[2:]

    def run(dtype):
        xs = x.astype(dtype)
        y = np.full(shape, -777.0, dtype)
        dx = np.full(x.shape, -777.0, dtype)
        dy = np.linspace(-1, 1, np.prod(shape)).reshape(shape).astype(dtype)
        if kind == "max":
            arg = np.full(shape, -5, np.int64)
            KP.max_pool_forward.parallel(y, arg, xs, geo)
            KP.max_pool_backward.parallel(dx, dy, arg, geo)
        else:
            KP.avg_pool_forward.parallel(y, xs, geo)
            KP.avg_pool_backward.parallel(dx, dy, geo)
        return y, dx + 777

    y64, dx64 = threads(1, lambda: run(np.float64))
    y_ref, back = pool_ref(x, (3, 2), (2, 2), (1, 1), kind)
    np.testing.assert_allclose(y64, y_ref, atol=1e-12)
    dy = np.linspace(-1, 1, np.prod(shape)).reshape(shape)
    np.testing.assert_allclose(dx64, back(dy), atol=1e-9)
    for dtype in (np.float64, np.float32):
        a = threads(1, lambda dt=dtype: run(dt))
        b = threads(2, lambda dt=dtype: run(dt))
        assert all(u.tobytes() == v.tobytes() for u, v in zip(a, b))
    y32, dx32 = run(np.float32)
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-3)  # +777 offset costs float32 digits
    assert numba.get_num_threads() >= 1


BAD = [
    (lambda: FC.max_pool_forward(np.zeros((1, 1, 4, 4)), 3, 1, 2), ValueError, "padding must be <= kernel_size // 2"),
    (lambda: FC.max_pool_forward(np.zeros((1, 1, 4, 4)), 5), ValueError, "larger than the padded input"),
    (lambda: FC.avg_pool_forward(np.zeros((1, 1, 4, 4)), 2, 0), ValueError, "stride must be >= 1"),
    (lambda: FC.avg_pool_forward(np.zeros((1, 1, 4, 4)), 2, 1, -1), ValueError, "padding must be >= 0"),
    (lambda: FC.avg_pool_forward(np.zeros((1, 1, 4, 4)), 0), ValueError, "kernel_size must be >= 1"),
    (lambda: FC.avg_pool_forward(np.zeros((1, 4, 4)), (2, 2)), ValueError, "kernel_size must be an int or 1 ints"),
    (lambda: FC.max_pool_forward(np.zeros((1, 1, 4, 4), np.int32), 2), TypeError, "float32/float64"),
    (lambda: FC.max_pool_forward(None, 2), TypeError, "got None"),
    (lambda: FC.max_pool_forward(np.zeros((4, 4)), 2), ValueError, "must be 3 or 4-D"),
    (lambda: FC.max_pool_forward(np.full((1, 1, 4, 4), np.nan), 2), ValueError, "NaN"),
    (lambda: FC.max_pool_backward(np.zeros((1, 1, 2, 2)), FC.avg_pool_forward(np.zeros((1, 1, 4, 4)), 2)[1]),
     TypeError, "PoolCache"),
    (lambda: FC.max_pool_backward(np.zeros((1, 1, 2, 3)), FC.max_pool_forward(np.zeros((1, 1, 4, 4)), 2)[1]),
     ValueError, "dy must have shape"),
    (lambda: MaxPool2D(2).forward(np.zeros((1, 4, 4))), ValueError, "MaxPool2D.forward: x must be 4-D"),
    (lambda: AvgPool1D(2).backward(np.zeros((1, 1, 2))), ValueError, "before forward"),
    (lambda: MaxPool2D(2, padding=2), ValueError, "padding must be <= kernel_size // 2"),
]


@pytest.mark.parametrize("call, exc, fragment", BAD, ids=[b[2] for b in BAD])
def test_bad_input(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value), str(info.value)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    "cls, kwargs, shape",
    [
        (MaxPool2D, {"kernel_size": 2}, (2, 3, 6, 7)),
        (MaxPool2D, {"kernel_size": 3, "stride": 2, "padding": 1}, (1, 2, 7, 7)),
        (AvgPool2D, {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 0)}, (2, 2, 5, 6)),
        (MaxPool1D, {"kernel_size": 3, "stride": 2, "padding": 1}, (2, 3, 9)),
        (AvgPool1D, {"kernel_size": 2}, (2, 3, 8)),
    ],
)
def test_pool_layers(cls, kwargs, shape):
    rng = np.random.default_rng(7)
    layer = cls(**kwargs)
    x = tie_free(shape, rng).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and y.shape[1:] == layer.output_shape(shape[1:])
    u = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(u)
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert layer.params == {} and layer.grads == {}
    clone = cls(**json.loads(json.dumps(layer.get_config())))
    assert clone.get_config() == layer.get_config()
    np.testing.assert_array_equal(clone(x), y)
