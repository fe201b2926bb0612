"""Dropout and train/eval mode: the mask, its scale, its reuse by backward, reproducibility, PyTorch."""

import numpy as np
import pytest
from needs import needs
from fd import assert_close, numeric_grad

import fastgrad as fg
import fastgrad.functional as F
from fastgrad import _jit


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_rate_scale_and_backward_reuse(p, rng):
    x = rng.standard_normal((200, 50)) + 3  # no zeros in x: a zero in y means dropped
    y, cache = F.dropout_forward(x, p, rng=np.random.default_rng(1))
    dropped = y == 0
    assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / x.size)
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - p), rtol=1e-15)
    dy = rng.standard_normal(x.shape)
    dx = F.dropout_backward(dy, cache)
    assert np.all(dx[dropped] == 0)
    np.testing.assert_allclose(dx[~dropped], dy[~dropped] / (1 - p), rtol=1e-15)


def test_eval_p0_and_p1(rng):
    x = rng.standard_normal((3, 4))
    for y, cache in (F.dropout_forward(x, 0.7, training=False), F.dropout_forward(x, 0.0)):
        assert np.array_equal(y, x) and cache.mask is None
        assert np.array_equal(F.dropout_backward(x, cache), x)
    y, cache = F.dropout_forward(x, 1.0)
    assert np.all(y == 0) and not np.isnan(y).any()
    assert np.all(F.dropout_backward(x, cache) == 0)


@pytest.mark.parametrize("p", [0.2, 0.6])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2)])
def test_finite_differences_with_the_mask_fixed(p, shape, rng):
    x = rng.standard_normal(shape)

    def forward():
        return F.dropout_forward(x, p, rng=np.random.default_rng(9))  # the same mask every call

    y, cache = forward()
    u = rng.standard_normal(shape)
    assert_close(F.dropout_backward(u, cache), numeric_grad(lambda: float(np.sum(u * forward()[0])), x), "x")


def test_float32_and_threads(threads):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 200))
    assert x.size >= _jit.PARALLEL_MIN_WORK
    dy = np.cos(x)

    def run(dt):
        y, cache = F.dropout_forward(x.astype(dt), 0.3, rng=np.random.default_rng(2))
        return y, F.dropout_backward(dy.astype(dt), cache)

    for dt in (np.float32, np.float64):
        one, two = threads(1, lambda: run(dt)), threads(2, lambda: run(dt))
        assert all(np.array_equal(a, b) for a, b in zip(one, two))
    for a, b in zip(run(np.float32), run(np.float64)):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def audit_ops(dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((256, 160)).astype(dtype)

    def op():
        y, cache = F.dropout_forward(x, 0.4, rng=np.random.default_rng(3))
        return y, F.dropout_backward(np.cos(x), cache)

    return [("dropout", op)]


# -- the layer and train/eval mode ------------------------------------------------------------
def test_layer_seed_reproducible_and_fresh_masks(rng):
    x = np.ones((50, 40))
    a, b = fg.Dropout(0.5, seed=3), fg.Dropout(0.5, seed=3)
    first = a(x)
    assert np.array_equal(first, b(x)), "the same seed gives the same masks"
    assert not np.array_equal(first, a(x)), "each forward draws a new mask"
    layer = fg.Dropout(0.25)  # the default generator
    y = layer(x)
    dy = rng.standard_normal(x.shape)
    assert set(np.unique(y)) == {0.0, np.float64(1 / 0.75)}
    assert np.array_equal(layer.backward(dy), dy * y), "backward reuses the forward's mask (x = 1: y is the mask)"
    assert fg.Dropout(0.3, seed=1).get_config() == {"p": 0.3, "seed": 1}


def test_train_and_eval_set_every_layer():
    lstm = fg.LSTM(3, 4)
    inner = fg.Sequential(fg.Dense(4, 4), fg.Dropout(0.5))
    model = fg.Sequential(fg.Dense(3, 4), inner, lstm)
    layers = [model, model.layers[0], inner, *inner.layers, lstm]
    assert all(layer.training for layer in layers)
    assert model.eval() is model
    assert not any(layer.training for layer in layers)
    model.train()
    assert all(layer.training for layer in layers)
    inner.train(False)
    assert [layer.training for layer in layers] == [True, True, False, False, False, True]
    x = np.ones((2, 4))
    assert np.array_equal(inner.layers[1](x), x), "eval: the identity"
    with pytest.raises(TypeError, match="mode"):
        model.train("yes")


def test_dropout_matches_torch(rng):
    """Eval is the identity in both; in training torch's kept values carry the same 1/(1 - p) scale and gradient."""
    torch = needs("torch")
    x = rng.standard_normal((40, 30)) + 3
    dy = rng.standard_normal(x.shape)
    ours = fg.Dropout(0.3, seed=0)
    ref = torch.nn.Dropout(0.3)
    for training in (False, True):
        ours.train(training)
        ref.train(training)
        xt = torch.tensor(x, requires_grad=True)
        yt = ref(xt)
        yt.backward(torch.from_numpy(dy))
        y = ours(x)
        dx = ours.backward(dy)
        kept_t = yt.detach().numpy() != 0
        kept = y != 0
        np.testing.assert_allclose(y[kept] / x[kept], 1 / 0.7 if training else 1.0, rtol=1e-15)
        np.testing.assert_allclose(yt.detach().numpy()[kept_t] / x[kept_t], 1 / 0.7 if training else 1.0, rtol=1e-15)
        np.testing.assert_allclose(dx[kept], (xt.grad.numpy()[kept_t] / dy[kept_t])[0] * dy[kept], rtol=1e-9)
        if not training:
            np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9)
            np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9)


def test_default_generator_makes_runs_reproducible():
    x = np.ones((20, 30))
    fg.manual_seed(11)
    first = fg.Dropout(0.5)(x)
    emb = fg.Embedding(4, 3).params["W"].copy()  # seed=None layers draw from the same stream
    fg.manual_seed(11)
    assert np.array_equal(first, fg.Dropout(0.5)(x))
    assert np.array_equal(emb, fg.Embedding(4, 3).params["W"])
    fg.manual_seed(12)
    assert not np.array_equal(first, fg.Dropout(0.5)(x))
