"""Convolution: forward against the NumPy oracle, float64 finite differences over a grid
of options, a hypothesis fuzz on the kernels with sentinel-filled outputs at 1 and 2
threads, float32 against float64, errors, and the Conv1D/Conv2D layers."""

from __future__ import annotations

import json

import numba
import numpy as np
import pytest
from fd import assert_close, numeric_grad, random_direction_check
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fastgrad.functional as FC
from fastgrad._checks import activation_code
from fastgrad.functional import geometry as FG
from fastgrad.functional import conv as FCONV
from fastgrad.kernels import conv as KC
from fastgrad.kernels import conv_im2col as KI
from fastgrad.kernels import products as KP
from fastgrad.layers.conv import Conv1D, Conv2D
from fastgrad.reference import activation, conv_grad_ref, conv_ref

SENTINEL = -12345.678

# (nd, N, C, M, groups, spatial, kernel, stride, padding, dilation, bias, activation)
GRID = [
    # 2-D
    (2, 2, 3, 4, 1, (5, 5), (3, 3), 1, 0, 1, "tied", "identity"),
    (2, 2, 3, 5, 1, (6, 5), (3, 2), 2, 1, 1, "tied", "tanh"),
    (2, 1, 2, 4, 1, (7, 7), (3, 3), 3, "same", 1, "tied", "sigmoid"),
    (2, 2, 2, 3, 1, (5, 6), (2, 3), (1, 2), ((0, 2), (1, 0)), 1, "untied", "identity"),
    (2, 1, 2, 4, 1, (6, 6), (3, 3), 1, "same", 2, "tied", "relu"),
    (2, 2, 2, 2, 1, (8, 5), (2, 2), (2, 1), 0, (3, 1), None, "leaky_relu"),
    (2, 2, 4, 6, 2, (5, 5), (3, 3), 1, 1, 1, "tied", "elu"),
    (2, 2, 3, 3, 3, (5, 4), (3, 3), 1, "same", 1, "tied", "softplus"),  # depthwise
    (2, 1, 2, 4, 2, (6, 5), (2, 2), 2, "same", 1, "untied", "silu"),  # depthwise x2
    (2, 2, 3, 4, 1, (4, 4), (1, 1), 1, 0, 1, "tied", "gelu"),
    (2, 1, 2, 4, 1, (7, 6), (5, 5), 1, 1, 1, "tied", "hard_sigmoid"),
    (2, 1, 2, 5, 1, (5, 6), (1, 4), 1, (0, 2), 1, "tied", "hard_tanh"),
    (2, 2, 2, 4, 1, (1, 7), (1, 3), 1, 0, 1, "tied", "identity"),  # size-1 height
    (2, 2, 2, 3, 1, (1, 1), (1, 1), 1, 1, 1, "untied", "tanh"),  # 1x1 input, padded
    (2, 1, 3, 9, 1, (5, 5), (3, 3), 2, "valid", 1, "tied", "identity"),  # M = 2 blocks + 1
    (2, 1, 2, 4, 1, (4, 5), (4, 5), 1, 0, 1, "untied", "identity"),  # kernel = input
    (2, 2, 2, 4, 1, (3, 3), (2, 2), 3, 0, 1, "tied", "tanh"),  # stride > input
    (2, 1, 4, 8, 4, (6, 6), (3, 3), (2, 3), "same", (2, 1), "tied", "relu"),
    (2, 1, 6, 6, 2, (5, 7), (3, 1), 1, ((2, 0), (0, 3)), (1, 3), None, "sigmoid"),
    (2, 2, 2, 4, 2, (7, 7), (3, 3), 3, 2, 3, "untied", "gelu"),
    (2, 1, 1, 4, 1, (9, 9), (5, 5), 2, "same", 2, "tied", "identity"),
    (2, 1, 3, 7, 1, (6, 6), (2, 2), 1, "same", 3, "tied", "silu"),
    (2, 2, 4, 4, 4, (5, 5), (3, 3), 2, 1, 2, None, "identity"),  # depthwise, strided, dilated
    (2, 1, 2, 6, 1, (4, 7), (3, 3), (1, 3), "same", 1, "untied", "elu"),
    (2, 1, 3, 4, 1, (5, 3), (3, 1), 2, ((1, 1), (0, 0)), 1, "tied", "leaky_relu"),
    (2, 1, 2, 4, 1, (3, 8), (2, 4), 1, "same", (1, 2), "tied", "softplus"),
    # 1-D
    (1, 2, 3, 4, 1, (8,), (3,), 1, 0, 1, "tied", "identity"),
    (1, 2, 3, 5, 1, (9,), (3,), 2, 1, 1, "tied", "tanh"),
    (1, 1, 2, 4, 1, (10,), (4,), 3, "same", 1, "tied", "sigmoid"),
    (1, 2, 2, 3, 1, (7,), (2,), 2, (0, 3), 1, "untied", "identity"),
    (1, 1, 2, 4, 1, (11,), (3,), 1, "same", 3, "untied", "relu"),
    (1, 2, 4, 6, 2, (7,), (3,), 1, ((2, 1),), 2, "tied", "gelu"),
    (1, 2, 3, 3, 3, (6,), (5,), 1, "same", 1, None, "silu"),  # depthwise
    (1, 2, 2, 4, 1, (1,), (1,), 1, 0, 1, "tied", "elu"),  # length 1
    (1, 1, 2, 4, 1, (5,), (5,), 1, 0, 1, "untied", "hard_tanh"),
    (1, 1, 2, 9, 1, (12,), (2,), 3, "valid", 2, "tied", "leaky_relu"),
    (1, 2, 2, 4, 2, (9,), (3,), 2, "same", 2, "tied", "softplus"),
    (1, 1, 1, 1, 1, (4,), (1,), 1, 2, 1, "tied", "hard_sigmoid"),
    (1, 1, 3, 4, 1, (6,), (4,), 2, (3, 0), 1, None, "identity"),
    (1, 1, 2, 8, 2, (13,), (5,), 3, 2, 2, "tied", "tanh"),
]


def make_case(case, rng, dtype=np.float64):
    nd, N, C, M, G, spatial, k, stride, padding, dilation, bias, _act = case
    x = rng.standard_normal((N, C) + spatial).astype(dtype)
    K = (0.5 * rng.standard_normal((M, C // G) + k)).astype(dtype)
    out = FC.conv_output_shape(spatial, k, stride, padding, dilation)
    B = None
    if bias == "tied":
        B = rng.standard_normal(M).astype(dtype)
    elif bias == "untied":
        B = rng.standard_normal((M,) + out).astype(dtype)
    pads = FC.resolve_padding(padding, spatial, k, FG.per_dim(stride, nd, "s", "t"), FG.per_dim(dilation, nd, "d", "t"))
    return x, K, B, pads


def case_id(case):
    nd, _N, C, M, G, spatial, k, stride, padding, dilation, bias, act = case
    return f"{nd}d-C{C}M{M}g{G}-{spatial}-k{k}-s{stride}-p{padding}-d{dilation}-{bias}-{act}".replace(" ", "")


def fd_case(case, seed=0) -> float:
    """Forward against the oracle and every gradient against finite differences; returns the worst FD error."""
    rng = np.random.default_rng(seed)
    nd, _N, _C, _M, G, _spatial, _k, stride, padding, dilation, _bias, act = case
    x, K, B, pads = make_case(case, rng)
    y, cache = FC.conv_forward(x, K, B, stride, padding, dilation, G, act)
    y_ref, _z_ref = conv_ref(x, K, B, FG.per_dim(stride, nd, "s", "t"), pads, FG.per_dim(dilation, nd, "d", "t"), G, act)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    u = rng.standard_normal(y.shape)
    dx, dK, dB = FC.conv_backward(u, cache)
    assert (dB is None) == (B is None)

    def loss():
        return float(np.sum(u * FC.conv_forward(x, K, B, stride, padding, dilation, G, act)[0]))

    worst = assert_close(dx, numeric_grad(loss, x), "dx")
    worst = max(worst, assert_close(dK, numeric_grad(loss, K), "dK"))
    if B is not None:
        worst = max(worst, assert_close(dB, numeric_grad(loss, B), "dB"))
    return worst


# Every grid case also runs in the pure-Python bounds audit (test_audit.py): since groups of <= 16
# output channels run im2col row by row, none takes more than 4 s there (AMD EPYC Zen 5); 10 cases
# were left out of it while the pure-Python product core made them take 4-27 s each.
@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_gradients_finite_differences(case):
    fd_case(case)


@pytest.mark.parametrize("case", GRID[::3], ids=case_id)
def test_backward_matches_reference(case):
    rng = np.random.default_rng(1)
    nd, _N, _C, _M, G, _spatial, _k, stride, padding, dilation, _bias, act = case
    x, K, B, pads = make_case(case, rng)
    s, d = FG.per_dim(stride, nd, "s", "t"), FG.per_dim(dilation, nd, "d", "t")
    y, cache = FC.conv_forward(x, K, B, stride, padding, dilation, G, act)
    u = rng.standard_normal(y.shape)
    _, z = conv_ref(x, K, B, s, pads, d, G, act)
    h = 1e-7  # sigma' by central difference of the oracle's sigma (the kernels use closed forms)
    dz = u * (activation(act, z + h) - activation(act, z - h)) / (2 * h)
    refs = conv_grad_ref(dz, x, K, B, s, pads, d, G)
    for got, ref in zip(FC.conv_backward(u, cache), refs):
        if ref is not None:
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_random_direction_realistic_shape(rng):
    x = rng.standard_normal((4, 6, 12, 12))
    K = 0.3 * rng.standard_normal((8, 3, 3, 3))
    B = rng.standard_normal(8)
    u = rng.standard_normal((4, 8, 6, 6))
    y, cache = FC.conv_forward(x, K, B, stride=2, padding="same", dilation=1, groups=2, activation="tanh")
    assert y.shape == u.shape
    dx, dK, dB = FC.conv_backward(u, cache)

    def loss():
        return float(np.sum(u * FC.conv_forward(x, K, B, 2, "same", 1, 2, "tanh")[0]))

    for arr, grad in ((x, dx), (K, dK), (B, dB)):
        random_direction_check(loss, arr, grad, rng)


# --------------------------------------------------------------------------
# fuzz: kernels called directly with sentinel-filled outputs, 1 and 2 threads
# --------------------------------------------------------------------------


@st.composite
def conv_options(draw):
    nd = draw(st.sampled_from([1, 2]))
    G = draw(st.sampled_from([1, 2, 3]))
    Cg = draw(st.integers(1, 3))
    Mg = draw(st.integers(1, 6))
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    d = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    spatial = tuple(draw(st.integers(1, 9)) for _ in range(nd))
    if draw(st.booleans()):
        padding = "same"
    else:
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd))
    bias = draw(st.sampled_from(["tied", "untied", None]))
    act = draw(st.sampled_from(["identity", "tanh", "relu", "gelu"]))
    N = draw(st.integers(1, 3))
    return nd, N, G * Cg, G * Mg, G, spatial, k, s, padding, d, bias, act


def _run_kernels(x4, K4, B3, dz4, geo, code, nthreads):
    saved = numba.get_num_threads()
    numba.set_num_threads(min(nthreads, numba.config.NUMBA_NUM_THREADS))
    try:
        z = np.full(dz4.shape, SENTINEL)
        y = np.full(dz4.shape, SENTINEL)
        KC.conv_forward.parallel(y if code else z, z, x4, K4, B3, geo, code)
        dK = np.full(K4.shape, SENTINEL)
        dB = np.full(B3.shape, SENTINEL)
        dx = np.full(x4.shape, SENTINEL)
        KC.conv_backward_filter.parallel(dK, dB, dz4, x4, geo)
        KC.conv_backward_data.parallel(dx, dz4, K4, geo)
    finally:
        numba.set_num_threads(saved)
    return (y if code else z), z, dK - SENTINEL, dB - SENTINEL, dx - SENTINEL


def _fuzz_check(case, seed, run):
    """Run the kernels ``run`` calls on one fuzz case at 1 and 2 threads: bitwise the same, and
    against the oracle.  Returns (results, the kernels' arguments) or None for a refused shape."""
    _nd, _N, _C, _M, G, spatial, k, stride, padding, dilation, _bias, act = case
    try:
        FC.conv_output_shape(spatial, k, stride, padding, dilation)
    except ValueError:
        return None  # kernel larger than the padded input: refused before any kernel runs
    rng = np.random.default_rng(seed)
    x, K, B, pads = make_case(case, rng)
    y_ref, z_ref = conv_ref(x, K, B, stride, pads, dilation, G, act)
    dz = rng.standard_normal(y_ref.shape)
    dx_ref, dK_ref, dB_ref = conv_grad_ref(dz, x, K, B, stride, pads, dilation, G)
    # the functional layer's own conversion to the kernels' 4-D views and dims
    _, cache = FC.conv_forward(x, K, B, stride, padding, dilation, G, act)
    B3 = cache.B if B is not None else np.zeros((0, 1, 1))
    args = (cache.x, cache.K, B3, dz.reshape(cache.z.shape), cache.geo, activation_code(act, "t"))
    r1 = run(*args, 1)
    r2 = run(*args, 2)
    for a, b in zip(r1, r2):
        assert np.array_equal(a, b), "1 and 2 threads differ"
    y, z, dK, dB, dx = r1
    np.testing.assert_allclose(y.reshape(y_ref.shape), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(z.reshape(z_ref.shape), z_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dK.reshape(dK_ref.shape), dK_ref, atol=1e-8)
    np.testing.assert_allclose(dx.reshape(dx_ref.shape), dx_ref, atol=1e-8)
    if B is not None:
        np.testing.assert_allclose(dB.reshape(dB_ref.shape), dB_ref, atol=1e-8)
    else:
        assert dB.size == 0
    return r1, args


@settings(deadline=None, max_examples=30)
@given(conv_options(), st.integers(0, 2**31))
def test_fuzz_kernels_sentinel_and_threads(case, seed):
    _fuzz_check(case, seed, _run_kernels)


def _run_im2col_kernels(x4, K4, B3, dz4, geo, code, nthreads, dx_wanted=True, rows=False):
    """The product-core kernels (kernels.conv_im2col) with sentinel-filled outputs and NaN-filled
    workspaces and packing buffers: a value they read before writing would show.  ``rows``: NO_PRODUCT
    plans, the kernels' row-by-row form (few channels per group)."""
    saved = numba.get_num_threads()
    numba.set_num_threads(min(nthreads, numba.config.NUMBA_NUM_THREADS))
    dt = x4.dtype
    P = geo.Ho * geo.Wo
    NP = geo.N * P
    R = geo.Cg * geo.kh * geo.kw

    def nan(size):
        return np.full(size, np.nan, dt)

    def packed(plan):
        return KP.Packed(*(nan(size) for size in KP.packed_sizes(plan, dt)))

    try:
        z = np.full(dz4.shape, SENTINEL)
        y = np.full(dz4.shape, SENTINEL)
        cols = nan(geo.C * geo.kh * geo.kw * NP)
        plan = KP.NO_PRODUCT if rows else KP.gemm_plan(geo.Mg, NP, R, dt)
        bufs = KI.Im2colBuffers(cols, nan(geo.M * NP), nan(0))
        KI.conv_forward_im2col.parallel(y if code else z, z, x4, K4.reshape(geo.M, -1), B3, geo, code, bufs,
                                        packed(plan), plan)
        dK = np.full(K4.shape, SENTINEL)
        dB = np.full(B3.shape, SENTINEL)
        dx = np.full(x4.shape, SENTINEL) if dx_wanted else np.zeros((0, 1, 1, 1))
        plan_dk = KP.NO_PRODUCT if rows else KP.gemm_plan(geo.Mg, R, NP, dt)
        plan_dx = KP.gemm_plan(R, NP, geo.Mg, dt) if dx_wanted and not rows else KP.NO_PRODUCT
        grads = KI.Im2colGrads(dx, dK.reshape(geo.M, -1), dB)
        bufs = KI.Im2colBuffers(cols, nan(geo.M * NP), nan(cols.size if dx_wanted else 0))
        KI.conv_backward_im2col.parallel(grads, dz4, K4.reshape(geo.M, -1), geo, bufs, packed(plan_dk),
                                         packed(plan_dx), plan_dk, plan_dx)
    finally:
        numba.set_num_threads(saved)
    return (y if code else z), z, dK - SENTINEL, dB - SENTINEL, dx - SENTINEL


@pytest.mark.nojit_skip  # pure-Python product core: minutes; the grid's tests run these kernels without the JIT
@settings(deadline=None, max_examples=30)
@given(conv_options(), st.integers(0, 2**31))
# found by this test: on W = 1 every output column of the first tap lies left of x (col_span's lo = 3 > Wo = 1),
# and im2col's zero fill of [0, lo) ran into the next sample's columns
@example((1, 2, 1, 1, 1, (1,), (3,), (1,), ((3, 3),), (3,), "tied", "identity"), 227)
@example((2, 2, 2, 2, 1, (3, 1), (2, 3), (1, 1), ((0, 0), (3, 3)), (1, 3), None, "tanh"), 5)
def test_fuzz_im2col_kernels_match_the_direct_twin_sentinel_and_threads(case, seed):
    """The im2col kernels (every stride runs here, 1 included), in both forms (packed products, and row by
    row), against the oracle and against the direct kernels, their index-form twin; bitwise the same at 1
    and 2 threads."""
    for rows in (False, True):
        checked = _fuzz_check(case, seed, lambda *a, rows=rows: _run_im2col_kernels(*a, rows=rows))
        if checked is None:
            return
        got, args = checked
        for a, b in zip(got, _run_kernels(*args, 1)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-10)
        # without dL/dX: the same dK and dB, nothing else computed
        _, _, dK_only, dB_only, no_dx = _run_im2col_kernels(*args, 2, False, rows)
        assert dK_only.tobytes() == got[2].tobytes() and dB_only.tobytes() == got[3].tobytes() and no_dx.size == 0


def test_which_kernels_a_geometry_runs():
    """functional.conv.conv_path: wide planes for stride 1 past SMALL_PLANE output positions,
    im2col products for smaller planes and for any other stride in either axis."""
    for size, stride, path in ((7, 1, "wide"), (6, 1, "im2col"), (7, 2, "im2col"), (7, (1, 2), "im2col"), (7, (3, 1), "im2col")):
        _, cache = FC.conv_forward(np.ones((1, 2, size, size)), np.ones((3, 2, 3, 3)), stride=stride)
        assert FCONV.conv_path(cache.geo) == path
        assert (cache.cols is not None) == (path == "im2col") and (cache.xp is not None) == (path == "wide")
    assert FCONV.conv_path(FC.conv_forward(np.ones((1, 1, 6, 6)), np.ones((1, 1, 2, 2)))[1].geo) == "wide"  # 25 outputs


def _unit_stride(case) -> bool:
    return all(s == 1 for s in FG.per_dim(case[7], case[0], "s", "t"))


#: every grid case on each path its shape allows (the wide kernels need stride 1); im2col in both its
#: forms: row by row (the grid's groups have at most FEW_CHANNELS output channels) and packed products
EVERY_PATH = [(c, p) for c in GRID for p in ("wide", "im2col", "im2col-products", "direct") if p != "wide" or _unit_stride(c)]


@pytest.mark.nojit_skip  # the grid's own finite-difference test runs each path's kernels in pure Python
@pytest.mark.parametrize("case, path", EVERY_PATH, ids=[f"{case_id(c)}-{p}" for c, p in EVERY_PATH])
def test_gradients_finite_differences_on_every_path(case, path, monkeypatch):
    """Every grid case through each path the shape allows, whichever conv_path would pick:
    the wide kernels need stride 1; im2col and the direct kernels take any geometry."""
    monkeypatch.setattr(FCONV, "conv_path", lambda geo: path.split("-")[0])
    if path == "im2col-products":
        monkeypatch.setattr(FCONV, "FEW_CHANNELS", 0)
    monkeypatch.setattr(FCONV, "_launches", FCONV._launches.__wrapped__)  # not remembered
    _, cache = FC.conv_forward(*make_case(case, np.random.default_rng(0))[:3], case[7], case[8], case[9], case[4], case[11])
    assert (cache.xp is not None, cache.cols is not None) == (path == "wide", path.startswith("im2col"))
    rows = FCONV._launches(FCONV.call_key(cache.geo, cache.x.dtype, "im2col")).plan_fwd == FCONV.products.NO_PRODUCT
    assert path != "im2col-products" or not rows
    assert fd_case(case) < 1e-6


# --------------------------------------------------------------------------
# float32 vs float64, threads, determinism
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", [GRID[1], GRID[6], GRID[17], GRID[27], GRID[31]], ids=case_id)
def test_float32_matches_float64(case):
    rng = np.random.default_rng(2)
    _nd, _N, _C, _M, G, _spatial, _k, stride, padding, dilation, _bias, act = case
    x, K, B, _ = make_case(case, rng)
    f32 = lambda a: None if a is None else a.astype(np.float32)
    y64, c64 = FC.conv_forward(x, K, B, stride, padding, dilation, G, act)
    y32, c32 = FC.conv_forward(f32(x), f32(K), f32(B), stride, padding, dilation, G, act)
    assert y32.dtype == np.float32
    # error scale: the same sums over |terms| (float32 rounding is relative to them)
    mag = np.abs(FC.conv_forward(np.abs(x), np.abs(K), None if B is None else np.abs(B), stride, padding, dilation, G)[0])
    assert np.all(np.abs(y32 - y64) <= 1e-5 * (mag + 1))
    u = rng.standard_normal(y64.shape)
    g64 = FC.conv_backward(u, c64)
    g32 = FC.conv_backward(u.astype(np.float32), c32)
    for a, b in zip(g32, g64):
        if b is not None:
            assert a.dtype == np.float32
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_bitwise(dtype, threads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 14, 13)).astype(dtype)
    K = rng.standard_normal((10, 3, 3, 3)).astype(dtype)
    B = rng.standard_normal(10).astype(dtype)
    u = rng.standard_normal((4, 10, 7, 7)).astype(dtype)

    def run():
        y, c = FC.conv_forward(x, K, B, 2, "same", 1, 2, "silu")
        return (y,) + FC.conv_backward(u, c)

    assert 4 * 10 * 49 * 27 >= 2**15  # big enough that the parallel twin runs
    one = threads(1, run)
    two = threads(2, run)
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()


def test_inputs_not_mutated(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    K = rng.standard_normal((4, 3, 3, 3))
    B = rng.standard_normal(4)
    copies = [a.copy() for a in (x, K, B)]
    y, c = FC.conv_forward(x, K, B, padding=1, activation="relu")
    u = rng.standard_normal(y.shape)
    u0 = u.copy()
    FC.conv_backward(u, c)
    for a, b in zip((x, K, B, u), copies + [u0]):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------
# padding resolution
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, k, s, d, pair, out",
    [
        (5, 3, 1, 1, (1, 1), 5),
        (5, 2, 1, 1, (0, 1), 5),  # odd pad goes after
        (7, 3, 2, 1, (1, 1), 4),
        (6, 3, 2, 1, (0, 1), 3),  # stride: out = ceil(in / stride)
        (5, 1, 3, 1, (0, 0), 2),
        (6, 3, 1, 2, (2, 2), 6),
        (4, 4, 3, 1, (1, 2), 2),
    ],
)
def test_same_padding(n, k, s, d, pair, out):
    assert FC.resolve_padding("same", (n,), (k,), (s,), (d,)) == (pair,)
    assert FC.conv_output_shape((n,), k, s, "same", d) == (out,)
    assert out == -(-n // s)


def test_padding_forms():
    r = FC.resolve_padding
    assert r(2, (5, 5), (3, 3), (1, 1), (1, 1)) == ((2, 2), (2, 2))
    assert r((1, 2), (5, 5), (3, 3), (1, 1), (1, 1)) == ((1, 1), (2, 2))
    assert r(((0, 1), (2, 3)), (5, 5), (3, 3), (1, 1), (1, 1)) == ((0, 1), (2, 3))
    assert r((1, 2), (5,), (3,), (1,), (1,)) == ((1, 2),)  # 1-D bare pair
    assert r("valid", (5, 5), (3, 3), (1, 1), (1, 1)) == ((0, 0), (0, 0))


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------

x2 = np.zeros((2, 4, 6, 6))
K2 = np.zeros((6, 2, 3, 3))

BAD = [
    (lambda: FC.conv_forward(x2, np.zeros((6, 3, 3, 3))), ValueError, "channel mismatch"),
    (lambda: FC.conv_forward(x2, np.zeros((6, 4, 7, 3))), ValueError, "larger than the padded input"),
    (lambda: FC.conv_forward(x2, np.zeros((6, 4, 3, 3)), dilation=3), ValueError, "dilation 3"),
    (lambda: FC.conv_forward(x2, K2, groups=3), ValueError, "groups=3 must divide"),
    (lambda: FC.conv_forward(x2, np.zeros((5, 2, 3, 3)), groups=2), ValueError, "out_channels=5"),
    (lambda: FC.conv_forward(x2, K2, groups=0), ValueError, "groups must be >= 1"),
    (lambda: FC.conv_forward(x2, K2, groups=2, stride=0), ValueError, "stride must be >= 1"),
    (lambda: FC.conv_forward(x2, K2, groups=2, stride=(1, -1)), ValueError, "stride must be >= 1"),
    (lambda: FC.conv_forward(x2, K2, groups=2, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda: FC.conv_forward(x2, K2, groups=2, stride=1.5), TypeError, "stride"),
    (lambda: FC.conv_forward(x2, K2, groups=2, stride=(1, 2, 3)), ValueError, "stride must be an int or 2 ints"),
    (lambda: FC.conv_forward(x2, K2, groups=2, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: FC.conv_forward(x2, K2, groups=2, padding=((0, -1), (0, 0))), ValueError, "padding must be >= 0"),
    (lambda: FC.conv_forward(x2, K2, groups=2, padding="full"), ValueError, "'valid' or 'same'"),
    (lambda: FC.conv_forward(x2, K2, groups=2, padding=(1, 2, 3)), ValueError, "padding must have 2 entries"),
    (lambda: FC.conv_forward(x2, K2, groups=2, padding=1.0), TypeError, "padding"),
    (lambda: FC.conv_forward(x2, K2, np.zeros(5), groups=2), ValueError, "B must have shape (6,)"),
    (lambda: FC.conv_forward(x2, K2, np.zeros((6, 5, 5)), groups=2), ValueError, "(6, 4, 4)"),
    (lambda: FC.conv_forward(x2, K2, groups=2, activation="swish"), ValueError, "unknown activation"),
    (lambda: FC.conv_forward(x2[0], K2, groups=2), ValueError, "K must be 3-D"),
    (lambda: FC.conv_forward(x2[0, 0], K2, groups=2), ValueError, "x must be 3 or 4-D"),
    (lambda: FC.conv_forward(x2.astype(np.int64), K2, groups=2), TypeError, "float32/float64"),
    (lambda: FC.conv_forward(x2.astype(np.float16), K2, groups=2), TypeError, "float32/float64"),
    (lambda: FC.conv_forward(x2.astype(np.float32), K2, groups=2), TypeError, "K has dtype float64"),
    (lambda: FC.conv_forward(None, K2, groups=2), TypeError, "got None"),
    (lambda: FC.conv_forward(x2, None, groups=2), TypeError, "got None"),
    (lambda: FC.conv_forward(np.full((2, 4, 6, 6), np.nan), K2, groups=2), ValueError, "NaN"),
    (lambda: FC.conv_forward(np.zeros((0, 4, 6, 6)), K2, groups=2), ValueError, "empty batch"),
    (lambda: FC.conv_backward(np.zeros((2, 6, 4, 4)), None), TypeError, "ConvCache"),
    (lambda: FC.conv_backward(np.zeros((2, 6, 4, 5)), FC.conv_forward(x2, K2, groups=2)[1]), ValueError, "dy must have shape"),
    (lambda: Conv2D(4, 6, 3).forward(np.zeros((2, 4, 6))), ValueError, "Conv2D.forward: x must be 4-D"),
    (lambda: Conv2D(4, 6, 3).forward(np.zeros((2, 3, 6, 6))), ValueError, "does not match in_channels=4"),
    (lambda: Conv2D(4, 6, 3).backward(np.zeros((2, 6, 4, 4))), ValueError, "before forward"),
    (lambda: Conv2D(4, 6, 3, groups=4), ValueError, "groups=4 must divide"),
    (lambda: Conv2D(4, 6, 3, bias="per-pixel"), ValueError, "'tied', 'untied' or None"),
    (lambda: Conv2D(4, 6, 3, bias="untied"), ValueError, "needs input_size"),
    (lambda: Conv2D(4, 6, 3, padding="full"), ValueError, "'valid' or 'same'"),
    (lambda: Conv2D(4, 6, 0), ValueError, "kernel_size must be >= 1"),
    (lambda: Conv1D(4, 6, (3, 3)), ValueError, "kernel_size must be an int or 1 ints"),
    (lambda: Conv2D(4, 6, 3, dtype=np.int32), TypeError, "float32 or float64"),
    (lambda: Conv2D(4, 6, 3, bias="untied", input_size=(5, 5)).forward(np.zeros((1, 4, 6, 6))), ValueError, "input_size"),
]


@pytest.mark.parametrize("call, exc, fragment", BAD, ids=[b[2] for b in BAD])
def test_bad_input(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert fragment in msg, msg
    assert len(msg) < 300


def test_nan_propagates_when_allowed():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = np.nan
    y, _c = FC.conv_forward(x, np.ones((1, 1, 2, 2)), check_finite=False)
    assert np.isnan(y[0, 0, :2, :2]).all() and not np.isnan(y[0, 0, 2:, 2:]).any()


# --------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, shape",
    [
        (Conv2D, {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": "same", "groups": 2}, (2, 4, 7, 7)),
        (Conv2D, {"in_channels": 3, "out_channels": 5, "kernel_size": (3, 2), "padding": ((1, 0), (0, 2)),
                  "bias": "untied", "input_size": (5, 6), "activation": "tanh"}, (2, 3, 5, 6)),
        (Conv2D, {"in_channels": 3, "out_channels": 3, "kernel_size": 3, "groups": 3, "bias": None, "dilation": 2}, (1, 3, 7, 7)),
        (Conv1D, {"in_channels": 2, "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": (0, 2), "activation": "relu"}, (3, 2, 9)),
        (Conv1D, {"in_channels": 2, "out_channels": 4, "kernel_size": 3, "padding": "same", "bias": "untied", "input_size": 8}, (3, 2, 8)),
    ],
)
def test_layer_protocol(cls, kwargs, shape, rng):
    layer = cls(**kwargs, dtype=np.float64, seed=0)
    x = rng.standard_normal(shape)
    y = layer(x)
    assert y.shape[1:] == layer.output_shape(shape[1:])
    ref = FC.conv_forward(x, layer.params["K"], layer.params.get("B"), layer.stride, layer.padding,
                          layer.dilation, layer.groups, layer.activation)[0]
    np.testing.assert_array_equal(y, ref)
    u = rng.standard_normal(y.shape)
    dx = layer.backward(u)
    first = {k: g.copy() for k, g in layer.grads.items()}
    dx2 = layer.backward(u)
    np.testing.assert_array_equal(dx, dx2)
    for k, g in first.items():  # backward accumulates
        np.testing.assert_allclose(layer.grads[k], 2 * g)
    assert set(layer.grads) == set(layer.params) == ({"K"} if layer.bias is None else {"K", "B"})
    # finite differences of the layer's own gradients
    layer.zero_grad()
    layer(x)
    dx = layer.backward(u)
    loss = lambda: float(np.sum(u * layer(x)))
    assert_close(dx, numeric_grad(loss, x), "dx")
    for k, p in layer.params.items():
        assert_close(layer.grads[k], numeric_grad(loss, p), k)
    # config round trip through JSON rebuilds the same architecture
    config = json.loads(json.dumps(layer.get_config()))
    clone = cls(**config)
    assert clone.get_config() == layer.get_config()
    for k in layer.params:
        clone.params[k][...] = layer.params[k]
    np.testing.assert_array_equal(clone(x), y)


def test_layer_dtype_conversion_and_init(rng):
    layer = Conv2D(2, 4, 3, seed=1)
    assert layer.params["K"].dtype == np.float32 and layer.params["B"].shape == (4,)
    bound = 1 / np.sqrt(2 * 9)
    assert np.abs(layer.params["K"]).max() <= bound
    y = layer(rng.standard_normal((1, 2, 5, 5)))  # float64 input converted to the layer's float32
    assert y.dtype == np.float32
    assert np.array_equal(Conv2D(2, 4, 3, seed=1).params["K"], layer.params["K"])
