"""LayerNorm and BatchNorm1D/2D: the kernels against the NumPy oracle, finite differences, threads, PyTorch."""

import numpy as np
import pytest
from needs import needs
from fd import assert_close, numeric_grad

import fastgrad as fg
import fastgrad.functional as F
from fastgrad import _jit
from fastgrad.kernels import norm as knorm
from fastgrad.reference import batch_norm, batch_norm_grads, layer_norm, layer_norm_grads

# (x shape, normalized_shape, affine, eps)
LAYER_NORM_GRID = [
    ((3, 5), 5, True, 1e-5),
    ((2, 3, 4), (4,), False, 1e-5),
    ((2, 3, 4), (3, 4), True, 1e-3),
    ((4, 1), 1, True, 1e-5),  # one feature: xhat = 0, the output is beta
    ((2, 2, 3, 2), (3, 2), False, 0.0),
    ((1, 70), 70, True, 1e-5),  # more features than one dgamma chunk
]

# (x shape, affine, training)
BATCH_NORM_GRID = [
    ((5, 3), True, True),
    ((4, 3, 2), True, True),
    ((4, 3, 2), False, True),
    ((3, 2, 3, 2), True, True),
    ((2, 1), True, True),  # two values per channel: the smallest batch with a variance
    ((5, 3), True, False),
    ((2, 2, 3, 2), False, False),
    ((1, 3, 1), True, False),  # evaluation works on one value per channel
]


def _affine(rng, shape, affine):
    if not affine:
        return None, None
    return 1 + 0.5 * rng.standard_normal(shape), rng.standard_normal(shape)


def _running(rng, C):
    return rng.standard_normal(C), 0.5 + rng.random(C)


@pytest.mark.parametrize("shape,normalized,affine,eps", LAYER_NORM_GRID)
def test_layer_norm_matches_reference(shape, normalized, affine, eps, rng):
    ns = (normalized,) if isinstance(normalized, int) else normalized
    x = rng.standard_normal(shape)
    gamma, beta = _affine(rng, ns, affine)
    y, cache = F.layer_norm_forward(x, normalized, gamma, beta, eps)
    np.testing.assert_allclose(y, layer_norm(x, ns, gamma, beta, eps), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(shape)
    got = F.layer_norm_backward(dy, cache)
    want = layer_norm_grads(dy, x, ns, gamma, eps)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 if eps else 1e-7)


@pytest.mark.parametrize("shape,normalized,affine,eps", [c for c in LAYER_NORM_GRID if c[3] > 0 and c[0] != (1, 70)])
def test_layer_norm_finite_differences(shape, normalized, affine, eps, rng):
    ns = (normalized,) if isinstance(normalized, int) else normalized
    x = rng.standard_normal(shape)
    gamma, beta = _affine(rng, ns, affine)
    y, cache = F.layer_norm_forward(x, normalized, gamma, beta, eps)
    u = rng.standard_normal(shape)
    dx, dgamma, dbeta = F.layer_norm_backward(u, cache)

    def loss():
        return float(np.sum(u * F.layer_norm_forward(x, normalized, gamma, beta, eps)[0]))

    assert_close(dx, numeric_grad(loss, x), "x")
    if affine:
        assert_close(dgamma, numeric_grad(loss, gamma), "gamma")
        assert_close(dbeta, numeric_grad(loss, beta), "beta")


@pytest.mark.parametrize("shape,affine,training", BATCH_NORM_GRID)
def test_batch_norm_matches_reference(shape, affine, training, rng):
    C = shape[1]
    x = rng.standard_normal(shape) * 2 + 0.5
    gamma, beta = _affine(rng, (C,), affine)
    rm, rv = _running(rng, C)
    y, cache = F.batch_norm_forward(x, gamma, beta, rm, rv, training)
    y_ref, mean, var = batch_norm(x, gamma, beta, rm, rv, training)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.mean, mean, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cache.var, var, rtol=1e-12, atol=1e-14)
    assert cache.count == x.size // C
    dy = rng.standard_normal(shape)
    got = F.batch_norm_backward(dy, cache)
    want = batch_norm_grads(dy, x, gamma, rm, rv, training)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("shape,affine,training", [c for c in BATCH_NORM_GRID if c[0] != (2, 1)])
def test_batch_norm_finite_differences(shape, affine, training, rng):
    C = shape[1]
    x = rng.standard_normal(shape)
    gamma, beta = _affine(rng, (C,), affine)
    rm, rv = _running(rng, C)
    y, cache = F.batch_norm_forward(x, gamma, beta, rm, rv, training)
    u = rng.standard_normal(shape)
    dx, dgamma, dbeta = F.batch_norm_backward(u, cache)

    def loss():
        return float(np.sum(u * F.batch_norm_forward(x, gamma, beta, rm, rv, training)[0]))

    assert_close(dx, numeric_grad(loss, x), "x")
    if affine:
        assert_close(dgamma, numeric_grad(loss, gamma), "gamma")
        assert_close(dbeta, numeric_grad(loss, beta), "beta")


def test_backward_into_accumulates(rng):
    x = rng.standard_normal((4, 3, 5))
    dy = rng.standard_normal(x.shape)
    g5, b5 = _affine(rng, (5,), True)
    g3, b3 = _affine(rng, (3,), True)
    for (_, cache), backward, backward_into in (
        (F.layer_norm_forward(x, 5, g5, b5), F.layer_norm_backward, F.layer_norm_backward_into),
        (F.batch_norm_forward(x, g3, b3), F.batch_norm_backward, F.batch_norm_backward_into),
    ):
        once = backward(dy, cache)
        grads = tuple(np.zeros_like(a) for a in once)
        backward_into(grads, dy, cache)
        backward_into(grads, dy, cache)
        for a, b_ in zip(grads, once):
            np.testing.assert_allclose(a, 2 * b_, rtol=1e-14)


@pytest.mark.parametrize("kind", ["layer", "batch"])
def test_float32_matches_float64(kind, rng):
    x = rng.standard_normal((8, 6, 5))
    g, b = _affine(rng, (5,) if kind == "layer" else (6,), True)
    dy = rng.standard_normal(x.shape)
    outs = {}
    for dt in (np.float32, np.float64):
        args = [a.astype(dt) for a in (x, g, b)]
        if kind == "layer":
            y, cache = F.layer_norm_forward(args[0], 5, args[1], args[2])
            grads = F.layer_norm_backward(dy.astype(dt), cache)
        else:
            y, cache = F.batch_norm_forward(*args)
            grads = F.batch_norm_backward(dy.astype(dt), cache)
        outs[dt] = (y, *grads)
    for a, b_ in zip(outs[np.float32], outs[np.float64]):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-5 * np.sqrt(x.size))


def audit_ops(dtype):
    """Shapes large enough for the parallel twins (used by test_zz_audit's race audit)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((40, 9, 150)).astype(dtype)
    g150, b150 = (rng.standard_normal(150).astype(dtype) for _ in range(2))
    g9, b9 = (rng.standard_normal(9).astype(dtype) for _ in range(2))
    rm, rv = rng.standard_normal(9).astype(dtype), (1 + rng.random(9)).astype(dtype)
    dy = np.cos(x)

    def layer():
        y, cache = F.layer_norm_forward(x, 150, g150, b150)
        return (y, *F.layer_norm_backward(dy, cache))

    def batch():
        out = []
        for training in (True, False):
            y, cache = F.batch_norm_forward(x, g9, b9, rm, rv, training)
            out += [y, *F.batch_norm_backward(dy, cache)]
        return tuple(out)

    return [("layer_norm", layer), ("batch_norm", batch)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_bitwise_equal(dtype, threads):
    for name, op in audit_ops(dtype):
        assert 40 * 9 * 150 * 4 >= _jit.PARALLEL_MIN_WORK
        one = threads(1, op)
        two = threads(2, op)
        for a, b in zip(one, two):
            assert np.array_equal(a, b), name


def test_parallel_twin_writes_every_element(rng):
    """Outputs pre-filled with NaN: the parallel twin overwrites all of them, like the serial one."""
    x = rng.standard_normal((6, 4, 3))
    g, b = _affine(rng, (4,), True)
    for twin in ("serial", "parallel"):
        y = np.full(x.shape, np.nan)
        xhat = np.full(x.shape, np.nan)
        stats = knorm.NormStats(*(np.full(4, np.nan) for _ in range(3)))
        getattr(knorm.batch_norm_forward, twin)(y, xhat, stats, x, g, b, 1e-5, True)
        assert np.isfinite(y).all() and np.isfinite(xhat).all() and all(np.isfinite(s).all() for s in stats)


# -- layers ----------------------------------------------------------------------------------
def test_layer_norm_layer_and_gradcheck(rng):
    layer = fg.LayerNorm((3, 4), dtype=np.float64)
    assert set(layer.params) == {"gamma", "beta"} and layer.params["gamma"].shape == (3, 4)
    assert np.all(layer.params["gamma"] == 1) and np.all(layer.params["beta"] == 0)
    layer.params["gamma"][...] = 1 + rng.standard_normal((3, 4))
    layer.params["beta"][...] = rng.standard_normal((3, 4))
    assert fg.gradcheck(layer, rng.standard_normal((2, 3, 4))).ok
    plain = fg.LayerNorm(4, elementwise_affine=False)
    assert plain.params == {} and fg.gradcheck(plain, rng.standard_normal((3, 4))).ok


def test_batch_norm_running_statistics_and_modes(rng):
    layer = fg.BatchNorm1D(3, momentum=0.2, dtype=np.float64)
    assert set(layer.params) == {"gamma", "beta"} and set(layer.buffers) == {"running_mean", "running_var"}
    rm, rv = np.zeros(3), np.ones(3)
    for _ in range(3):
        x = rng.standard_normal((6, 3, 4)) * 3 + 1
        layer(x)
        g = np.moveaxis(x, 1, 0).reshape(3, -1)
        rm = 0.8 * rm + 0.2 * g.mean(axis=1)
        rv = 0.8 * rv + 0.2 * g.var(axis=1, ddof=1)  # unbiased, as PyTorch
    np.testing.assert_allclose(layer.buffers["running_mean"], rm, rtol=1e-13)
    np.testing.assert_allclose(layer.buffers["running_var"], rv, rtol=1e-13)
    layer.eval()
    x = rng.standard_normal((2, 3, 4))
    before = {k: v.copy() for k, v in layer.buffers.items()}
    y = layer(x)
    assert all(np.array_equal(before[k], layer.buffers[k]) for k in before), "eval must not update the statistics"
    np.testing.assert_allclose(y, (x - rm[:, None]) / np.sqrt(rv[:, None] + 1e-5), rtol=1e-12, atol=1e-12)
    # evaluation accepts a single value per channel; training refuses it
    layer(np.ones((1, 3)))
    layer.train()
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer(np.ones((1, 3)))


def test_batch_norm_buffers_save_and_load(tmp_path, rng):
    model = fg.Sequential(fg.Conv2D(1, 2, 3, padding=1, seed=0), fg.BatchNorm2D(2), fg.Flatten(), fg.Dense(32, 3, seed=1),
                          fg.BatchNorm1D(3, affine=False))
    model(rng.standard_normal((4, 1, 4, 4)))
    assert list(model.buffers) == ["1.running_mean", "1.running_var", "4.running_mean", "4.running_var"]
    path = tmp_path / "bn.npz"
    fg.save(model, path)
    loaded = fg.load(path)
    for k, v in model.buffers.items():
        assert loaded.buffers[k].dtype == v.dtype and np.array_equal(loaded.buffers[k], v), k
    x = rng.standard_normal((3, 1, 4, 4)).astype(np.float32)
    assert np.array_equal(model.eval()(x), loaded.eval()(x))
    other = fg.Sequential(fg.Conv2D(1, 2, 3, padding=1), fg.BatchNorm2D(2), fg.Flatten(), fg.Dense(32, 3), fg.BatchNorm1D(3, affine=False))
    fg.load_weights(other, path)
    assert np.array_equal(other.buffers["4.running_var"], model.buffers["4.running_var"])
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as fh:
        np.savez(fh, **{k: v for k, v in arrays.items() if k != "buffer/1.running_var"})
    with pytest.raises(fg.ModelFileError, match="missing buffer key '1.running_var'"):
        fg.load(bad)


def test_fit_predict_and_evaluate_use_the_modes(rng):
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = fg.Sequential(fg.Dense(4, 8, seed=0), fg.BatchNorm1D(8), fg.Activation("relu"), fg.Dropout(0.5, seed=1), fg.Dense(8, 2, seed=2))
    model.fit(x, y, fg.CrossEntropyLoss(), fg.Adam(model, 1e-2), epochs=3, batch_size=16, progress=False, validation_data=(x, y))
    assert all(layer.training for layer in model.layers)
    stats = {k: v.copy() for k, v in model.buffers.items()}
    first = model.predict(x)
    assert np.array_equal(first, model.predict(x)), "predict runs in eval mode: no dropout noise"
    assert all(np.array_equal(stats[k], v) for k, v in model.buffers.items()), "predict does not move the statistics"
    assert all(layer.training for layer in model.layers), "predict restores each layer's mode"
    model.layers[1].eval()
    model.predict(x)
    assert [layer.training for layer in model.layers] == [True, False, True, True, True]


# -- PyTorch ---------------------------------------------------------------------------------
def _t(torch, a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def test_layer_norm_matches_torch(rng):
    torch = needs("torch")
    for normalized, affine in ((5,), True), ((3, 5), True), ((5,), False):
        ours = fg.LayerNorm(normalized, eps=1e-4, elementwise_affine=affine, dtype=np.float64)
        ref = torch.nn.LayerNorm(normalized, eps=1e-4, elementwise_affine=affine, dtype=torch.float64)
        if affine:
            ours.params["gamma"][...] = 1 + rng.standard_normal(normalized)
            ours.params["beta"][...] = rng.standard_normal(normalized)
            with torch.no_grad():
                ref.weight.copy_(torch.from_numpy(ours.params["gamma"]))
                ref.bias.copy_(torch.from_numpy(ours.params["beta"]))
        x = rng.standard_normal((2, 4, 3, 5)[-1 - len(normalized) - 1:])
        dy = rng.standard_normal(x.shape)
        xt = _t(torch, x)
        yt = ref(xt)
        yt.backward(torch.from_numpy(dy))
        y = ours(x)
        dx = ours.backward(dy)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
        if affine:
            np.testing.assert_allclose(ours.grads["gamma"], ref.weight.grad.numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(ours.grads["beta"], ref.bias.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind,shape", [("1d", (6, 3)), ("1d", (5, 3, 4)), ("2d", (4, 3, 3, 2))])
def test_batch_norm_matches_torch_over_training_steps_and_in_eval(kind, shape, rng):
    torch = needs("torch")
    C = shape[1]
    ours = (fg.BatchNorm1D if kind == "1d" else fg.BatchNorm2D)(C, eps=1e-3, momentum=0.3, dtype=np.float64)
    ref = (torch.nn.BatchNorm1d if kind == "1d" else torch.nn.BatchNorm2d)(C, eps=1e-3, momentum=0.3, dtype=torch.float64)
    ours.params["gamma"][...] = 1 + rng.standard_normal(C)
    ours.params["beta"][...] = rng.standard_normal(C)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(ours.params["gamma"]))
        ref.bias.copy_(torch.from_numpy(ours.params["beta"]))
    opt_t = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = fg.SGD(ours, lr=0.1)
    for mode, steps in (("train", 4), ("eval", 2)):
        ref.train(mode == "train")
        ours.train(mode == "train")
        for _ in range(steps):
            x = rng.standard_normal(shape) * 2 + 1
            dy = rng.standard_normal(shape)
            xt = _t(torch, x)
            opt_t.zero_grad()
            yt = ref(xt)
            yt.backward(torch.from_numpy(dy))
            opt.zero_grad()
            y = ours(x)
            dx = ours.backward(dy)
            np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(ours.grads["gamma"], ref.weight.grad.numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(ours.grads["beta"], ref.bias.grad.numpy(), rtol=1e-9, atol=1e-12)
            opt_t.step()
            opt.step()
            np.testing.assert_allclose(ours.buffers["running_mean"], ref.running_mean.numpy(), rtol=1e-9, atol=1e-14)
            np.testing.assert_allclose(ours.buffers["running_var"], ref.running_var.numpy(), rtol=1e-9)


def test_buffers_are_part_of_state_dicts_and_checkpoints(tmp_path, rng):
    model = fg.Sequential(fg.Dense(3, 4, dtype=np.float64, seed=0), fg.BatchNorm1D(4, dtype=np.float64))
    model(rng.standard_normal((8, 3)))
    state = model.state_dict()
    assert list(state) == ["0.W", "0.b", "1.gamma", "1.beta", "1.running_mean", "1.running_var"]
    assert state["1.running_var"] is not model.buffers["1.running_var"]  # a copy
    model(rng.standard_normal((8, 3)) + 5)  # the statistics move on
    model.load_state_dict(state)
    assert np.array_equal(model.buffers["1.running_mean"], state["1.running_mean"])
    with pytest.raises(ValueError, match="missing keys '1.running_var'"):
        model.load_state_dict({k: v for k, v in state.items() if k != "1.running_var"})
    opt = fg.SGD(model, 0.1)
    path = tmp_path / "ck.npz"
    fg.save_checkpoint(path, model, opt, epoch=1)
    back = fg.load_checkpoint(path).model
    for k, v in model.buffers.items():
        assert np.array_equal(back.buffers[k], v), k
