"""Dense kernels: reference agreement, finite differences, dtypes, threads."""

import numpy as np
import pytest
from needs import needs
from fd import KINKS, assert_close, numeric_grad, random_direction_check

import fastgrad as fg
import fastgrad.functional as F
from fastgrad import _jit
from fastgrad.kernels import dense as kdense
from fastgrad.reference import activation, activation_grad, dense, dense_grads


def _problem(rng, N, n, m, act, dtype=np.float64):
    x = rng.standard_normal((N, n))
    W = rng.standard_normal((m, n)) / np.sqrt(n)
    b = rng.standard_normal(m) * 0.5
    # keep every pre-activation 1e-3 away from the activation's kinks so the
    # central difference (eps 1e-6) never straddles one
    z = x @ W.T + b
    for k in KINKS.get(act, ()):
        b = b + np.where(np.min(np.abs(z - k), axis=0) < 1e-3, 5e-3, 0.0)
        z = x @ W.T + b
    return x.astype(dtype), W.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("act", fg.ACTIVATIONS)
def test_activation_kernels_match_reference(act, rng):
    z = rng.standard_normal(200) * 4
    for k in KINKS.get(act, ()):
        z = np.where(np.abs(z - k) < 1e-3, z + 1e-2, z)
    y, cache = F.activation_forward(z, act)
    np.testing.assert_allclose(y, activation(act, z), rtol=1e-12, atol=1e-14)
    dz = F.activation_backward(np.ones_like(z), cache)
    np.testing.assert_allclose(dz, activation_grad(act, z), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("act", fg.ACTIVATIONS)
def test_dense_forward_backward_match_reference(act, rng):
    x, W, b = _problem(rng, 5, 7, 4, act)
    y, cache = F.dense_forward(x, W, b, act)
    y_ref, z_ref = dense(x, W, b, act)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-13)
    dy = rng.standard_normal(y.shape)
    dx, dW, db = F.dense_backward(dy, cache)
    dx_r, dW_r, db_r = dense_grads(dy, x, W, z_ref, act)
    for got, want in ((dx, dx_r), (dW, dW_r), (db, db_r)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", fg.ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_dense_finite_differences(act, bias, rng):
    x, W, b = _problem(rng, 3, 4, 5, act)
    if not bias:
        b = None
    y, cache = F.dense_forward(x, W, b, act)
    u = rng.standard_normal(y.shape)
    dx, dW, db = F.dense_backward(u, cache)

    def loss():
        return float(np.sum(u * F.dense_forward(x, W, b, act)[0]))

    assert_close(dx, numeric_grad(loss, x), f"{act} dx")
    assert_close(dW, numeric_grad(loss, W), f"{act} dW")
    if bias:
        assert_close(db, numeric_grad(loss, b), f"{act} db")
    else:
        assert db is None


def test_dense_random_direction_realistic_shape(rng):
    x, W, b = _problem(rng, 64, 96, 80, "tanh")
    y, cache = F.dense_forward(x, W, b, "tanh")
    u = rng.standard_normal(y.shape)
    dx, dW, db = F.dense_backward(u, cache)

    def loss():
        return float(np.sum(u * F.dense_forward(x, W, b, "tanh")[0]))

    for arr, grad in ((x, dx), (W, dW), (b, db)):
        random_direction_check(loss, arr, grad, rng)


@pytest.mark.parametrize("act", ["identity", "tanh", "gelu"])
def test_float32_agrees_with_float64(act, rng):
    x, W, b = _problem(rng, 16, 48, 24, act)
    y64, c64 = F.dense_forward(x, W, b, act)
    y32, c32 = F.dense_forward(x.astype(np.float32), W.astype(np.float32), b.astype(np.float32), act)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y64.shape)
    g64 = F.dense_backward(dy, c64)
    g32 = F.dense_backward(dy.astype(np.float32), c32)
    for a, b_ in zip(g32, g64):
        assert a.dtype == np.float32
        # reduction over up to 48 terms of O(1): scale rtol by the length
        np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-4 * np.sqrt(48))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_bitwise_equal(dtype, rng, threads):
    # large enough that pick() takes the parallel twin at 2 threads
    x, W, b = _problem(rng, 64, 128, 96, "silu", dtype)
    assert 64 * 128 * 96 >= _jit.PARALLEL_MIN_WORK

    def run():
        y, cache = F.dense_forward(x, W, b, "silu")
        dy = np.cos(y)  # deterministic upstream gradient
        return (y, *F.dense_backward(dy, cache))

    one = threads(1, run)
    two = threads(2, run)
    for a, b_ in zip(one, two):
        assert np.array_equal(a, b_)


def test_parallel_twin_equals_serial_twin(rng):
    from fastgrad.kernels import products

    x, W, b = _problem(rng, 33, 70, 41, "tanh")
    plan = products.gemm_plan(33, 41, 70, x.dtype)
    outs = []
    for twin in (kdense.dense_forward.serial, kdense.dense_forward.parallel):
        y = np.full((33, 41), np.nan)
        z = np.full((33, 41), np.nan)
        packed = products.Packed(*[np.full(size, np.nan) for size in products.packed_sizes(plan, x.dtype)])
        twin(y, z, x, W, b, 2, packed, plan)
        outs.append((y, z))
    assert not np.isnan(outs[0][0]).any()
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])


def test_backward_accumulates_into_layer_grads(rng):
    layer = fg.Dense(4, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 4))
    dy = rng.standard_normal((2, 3))
    layer(x)
    layer.backward(dy)
    once = {k: v.copy() for k, v in layer.grads.items()}
    layer(x)
    layer.backward(dy)
    for k in once:
        np.testing.assert_allclose(layer.grads[k], 2 * once[k])
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values())


def test_dense_layer_converts_float64_input_to_float32():
    layer = fg.Dense(3, 2, seed=0)
    y = layer(np.ones((1, 3), np.float64))
    assert y.dtype == np.float32
    x = np.ones((1, 3))
    before = x.copy()
    layer(x)
    assert np.array_equal(x, before)


def test_dense_init_is_seeded_and_fan_in_scaled():
    a, b = fg.Dense(400, 50, seed=7), fg.Dense(400, 50, seed=7)
    assert np.array_equal(a.params["W"], b.params["W"])
    assert np.abs(a.params["W"]).max() <= 1 / np.sqrt(400)
    assert np.abs(a.params["W"]).max() > 0.9 / np.sqrt(400)
    assert not np.array_equal(a.params["W"], fg.Dense(400, 50, seed=8).params["W"])


def test_gradcheck_passes_every_activation_and_catches_one_percent_error(rng):
    for act in fg.ACTIVATIONS:
        fg.gradcheck(fg.Dense(5, 4, act, dtype=np.float64, seed=3), rng.standard_normal((3, 5)))

    class OffByOnePercent(fg.Dense):
        def backward(self, dy):
            return 1.01 * super().backward(dy)

    with pytest.raises(fg.GradcheckError) as info:
        fg.gradcheck(OffByOnePercent(5, 4, "tanh", dtype=np.float64, seed=3), rng.standard_normal((3, 5)))
    rows = {r.name: r.ok for r in info.value.report.rows}
    assert rows["x"] is False and rows["W"] is True

    class WeightGradOff(fg.Dense):
        def backward(self, dy):
            dx = super().backward(dy)
            self.grads["W"] *= 1.01
            return dx

    with pytest.raises(fg.GradcheckError):
        fg.gradcheck(WeightGradOff(5, 4, "tanh", dtype=np.float64, seed=3), rng.standard_normal((3, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, n, m", [(70, 130, 67), (13, 300, 9), (7, 5, 300), (300, 9, 13)])
def test_backward_matches_reference_at_both_thread_counts(N, n, m, dtype, rng, threads):
    # shapes with edge tiles in every product, more than one KC block of the summed
    # index (300), and accumulation into nonzero grads through the layer
    x, W, b = _problem(rng, N, n, m, "tanh", dtype)
    y, cache = F.dense_forward(x, W, b, "tanh")
    dy = rng.standard_normal(y.shape).astype(dtype)
    _, z_ref = dense(x.astype(np.float64), W.astype(np.float64), b.astype(np.float64), "tanh")
    want = dense_grads(dy.astype(np.float64), x.astype(np.float64), W.astype(np.float64), z_ref, "tanh")
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for nthreads in (1, 2):
        got = threads(nthreads, lambda: F.dense_backward(dy, cache))
        for g, w, name in zip(got, want, ("dx", "dW", "db")):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * 10 * np.sqrt(max(N, m)), err_msg=f"{name}, {nthreads} threads")
    layer = fg.Dense(n, m, activation="tanh", dtype=dtype)
    layer.params["W"][...] = W
    layer.params["b"][...] = b
    layer(x)
    layer.backward(dy)
    layer(x)
    layer.backward(dy)  # the kernel adds to the grads already there
    np.testing.assert_allclose(layer.grads["W"], 2 * want[1], rtol=tol, atol=tol * 20 * np.sqrt(N))
    np.testing.assert_allclose(layer.grads["b"], 2 * want[2], rtol=tol, atol=tol * 20 * np.sqrt(N))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, n, m", [(1, 1, 1), (3, 5, 2), (7, 300, 3), (13, 4, 37), (65, 33, 17)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_its_plain_twin_on_edge_shapes(dtype, N, n, m, bias):
    """dense_forward (the product core: edge tiles, more than one KC block at n = 300) against
    kernels.dense.dense_reference, the plain z[s, k] = b[k] + sum_j W[k, j] x[s, j] beside it."""
    from fastgrad.kernels import products

    rng = np.random.default_rng(N * 100 + n * 10 + m)
    x = rng.standard_normal((N, n)).astype(dtype)
    W = rng.standard_normal((m, n)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype) if bias else np.zeros(0, dtype)
    plan = products.gemm_plan(N, m, n, dtype)
    got = np.full((N, m), np.nan, dtype)
    want = np.full((N, m), np.nan, dtype)
    for twin in (kdense.dense_forward.serial, kdense.dense_forward.parallel):
        packed = products.Packed(*[np.full(size, np.nan, dtype) for size in products.packed_sizes(plan, dtype)])
        twin(got, got, x, W, b, 0, packed, plan)
        kdense.dense_reference(want, x, W, b)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(n) * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, n, m", [(1, 1, 1), (3, 5, 2), (7, 300, 3), (13, 4, 37), (65, 33, 17), (300, 7, 9), (130, 70, 240)])
@pytest.mark.parametrize("bias", [True, False])
def test_backward_equals_its_plain_twin_on_edge_shapes(dtype, N, n, m, bias):
    """dense_backward (two products on the product core, edge tiles, N = 300 two KC blocks of
    dW, (130, 70, 240) past SPLIT_WORK: two launches) against kernels.dense.dense_backward_reference,
    both adding to gradients that already hold values."""
    from fastgrad.kernels import products

    rng = np.random.default_rng(N * 100 + n * 10 + m + 7)
    x = rng.standard_normal((N, n)).astype(dtype)
    W = rng.standard_normal((m, n)).astype(dtype)
    dz = rng.standard_normal((N, m)).astype(dtype)
    start = kdense.DenseGrads(rng.standard_normal((N, n)).astype(dtype), rng.standard_normal((m, n)).astype(dtype),
                              rng.standard_normal(m if bias else 0).astype(dtype))
    plan_dx = products.gemm_plan(N, n, m, dtype)
    plan_dw = products.gemm_plan(m, n, N, dtype)
    want = kdense.DenseGrads(*(a.copy() for a in start))
    kdense.dense_backward_reference(want, dz, x, W)
    assert (N * n * m >= kdense.SPLIT_WORK) == ((N, n, m) == (130, 70, 240))  # the two-launch path is covered
    for twin in (kdense.dense_backward.serial, kdense.dense_backward.parallel):
        got = kdense.DenseGrads(*(a.copy() for a in start))
        p_dx = products.Packed(*[np.full(size, np.nan, dtype) for size in products.packed_sizes(plan_dx, dtype)])
        p_dw = products.Packed(*[np.full(size, np.nan, dtype) for size in products.packed_sizes(plan_dw, dtype)])
        twin(got, dz, x, W, p_dx, p_dw, plan_dx, plan_dw)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for name, g, w, depth in (("dx", got.dx, want.dx, m), ("dW", got.dW, want.dW, N), ("db", got.db, want.db, N)):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.sqrt(depth) * max(1.0, np.abs(w).max(initial=0.0)), err_msg=name)


def test_dense_layer_on_nd_input_acts_on_the_last_axis(rng):
    layer = fg.Dense(4, 3, "tanh", dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 5, 4))
    y = layer(x)
    assert y.shape == (2, 5, 3)
    flat = fg.Dense(4, 3, "tanh", dtype=np.float64, seed=0)
    assert np.array_equal(y, flat(x.reshape(10, 4)).reshape(2, 5, 3))
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    assert dx.shape == x.shape
    assert np.array_equal(dx, flat.backward(dy.reshape(10, 3)).reshape(x.shape))
    assert np.array_equal(layer.grads["W"], flat.grads["W"])
    assert fg.gradcheck(fg.Dense(3, 2, "gelu_erf", seed=1), rng.standard_normal((2, 2, 3, 3))).ok
    assert layer.output_shape((7, 4)) == (7, 3)


@pytest.mark.parametrize("act,module", [("gelu_erf", "GELU"), ("gelu", "GELU_tanh"), ("silu", "SiLU")])
def test_dense_nd_and_gelu_match_torch(act, module, rng):
    torch = needs("torch")
    layer = fg.Dense(5, 4, act, dtype=np.float64, seed=2)
    lin = torch.nn.Linear(5, 4, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(layer.params["W"]))
        lin.bias.copy_(torch.from_numpy(layer.params["b"]))
    nonlin = torch.nn.GELU(approximate="tanh") if module == "GELU_tanh" else getattr(torch.nn, module)()
    x = rng.standard_normal((3, 2, 5))
    dy = rng.standard_normal((3, 2, 4))
    xt = torch.tensor(x, requires_grad=True)
    yt = nonlin(lin(xt))
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(layer.grads["W"], lin.weight.grad.numpy(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(layer.grads["b"], lin.bias.grad.numpy(), rtol=1e-9, atol=1e-13)
