"""Softmax, its JVP/VJP, log-softmax and cross-entropy."""

import numpy as np
import pytest
from fd import assert_close, numeric_grad, random_direction_check

import fastgrad as fg
import fastgrad.functional as F
from fastgrad.reference import cross_entropy, log_softmax, softmax, softmax_jacobian, softmax_vjp


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_matches_reference_on_any_axis(axis, rng):
    x = rng.standard_normal((3, 4, 5))
    np.testing.assert_allclose(F.softmax(x, axis), softmax(x, axis), rtol=1e-13)
    np.testing.assert_allclose(F.log_softmax(x, axis), log_softmax(x, axis), rtol=1e-13, atol=1e-14)


def test_softmax_backward_matches_explicit_jacobian(rng):
    x = rng.standard_normal((4, 6))
    y = F.softmax(x)
    g = rng.standard_normal(x.shape)
    np.testing.assert_allclose(F.softmax_backward(g, y), softmax_vjp(g, y), rtol=1e-12, atol=1e-15)


def test_jvp_equals_vjp_because_jacobian_is_symmetric(rng):
    """The same O(n) map serves both directions: J v == J^T v for every v."""
    x = rng.standard_normal((5, 7))
    y = F.softmax(x)
    v = rng.standard_normal(x.shape)
    out = F.softmax_backward(v, y)
    for r in range(5):
        J = softmax_jacobian(y[r])
        assert np.allclose(J, J.T)
        np.testing.assert_allclose(out[r], J @ v[r], rtol=1e-12, atol=1e-15)  # JVP
        np.testing.assert_allclose(out[r], J.T @ v[r], rtol=1e-12, atol=1e-15)  # VJP
    # forward-mode check against finite differences along v: (s(x + e v) - s(x - e v)) / 2e
    e = 1e-6
    jvp_fd = (F.softmax(x + e * v) - F.softmax(x - e * v)) / (2 * e)
    np.testing.assert_allclose(out, jvp_fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_finite_differences(axis, rng):
    x = rng.standard_normal((3, 5))
    u = rng.standard_normal(x.shape)
    y = F.softmax(x, axis)
    dx = F.softmax_backward(u, y, axis)
    assert_close(dx, numeric_grad(lambda: float(np.sum(u * F.softmax(x, axis))), x), "softmax")
    # sum(y) alone would pass trivially (its gradient is 0): make sure u is not that
    assert np.abs(dx).max() > 1e-3


def test_log_softmax_finite_differences(rng):
    x = rng.standard_normal((3, 5))
    u = rng.standard_normal(x.shape)
    out = F.log_softmax(x)
    dx = F.log_softmax_backward(u, out)
    assert_close(dx, numeric_grad(lambda: float(np.sum(u * F.log_softmax(x))), x), "log_softmax")


def test_cross_entropy_labels_and_probabilities(rng):
    x = rng.standard_normal((4, 6))
    labels = np.array([0, 5, 2, 2])
    loss, grad = F.cross_entropy(x, labels)
    ref_loss, ref_grad = cross_entropy(x, labels)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-15)
    assert_close(grad, numeric_grad(lambda: F.cross_entropy(x, labels)[0], x), "ce labels")

    p = F.softmax(rng.standard_normal((4, 6)) * 2)
    loss, grad = F.cross_entropy(x, p)
    ref_loss, ref_grad = cross_entropy(x, p)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-15)
    assert_close(grad, numeric_grad(lambda: F.cross_entropy(x, p)[0], x), "ce probs")
    # one-hot probabilities give exactly the label loss
    onehot = np.eye(6)[labels]
    assert F.cross_entropy(x, onehot)[0] == pytest.approx(F.cross_entropy(x, labels)[0], rel=1e-14)
    # reduction="sum" is N times the mean
    assert F.cross_entropy(x, labels, reduction="sum")[0] == pytest.approx(4 * F.cross_entropy(x, labels)[0])


def test_softmax_random_direction_realistic(rng):
    x = rng.standard_normal((64, 1000)) * 3
    u = rng.standard_normal(x.shape)
    dx = F.softmax_backward(u, F.softmax(x))
    random_direction_check(lambda: float(np.sum(u * F.softmax(x))), x, dx, rng)


@pytest.mark.parametrize("dtype,scale", [(np.float64, 1000.0), (np.float32, 100.0)])
def test_extreme_logits_stay_finite(dtype, scale, rng):
    x = (rng.choice([-1.0, 1.0], size=(8, 50)) * scale).astype(dtype)
    x[:, 0] = scale  # ties at the max
    y = F.softmax(x)
    assert y.dtype == dtype
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=10 * np.finfo(dtype).eps * 50)
    ls = F.log_softmax(x)
    assert np.isfinite(ls).all()
    loss, grad = F.cross_entropy(x, np.zeros(8, np.int64))
    assert np.isfinite(loss) and np.isfinite(grad).all()
    dx = F.softmax_backward(np.ones_like(y), y)
    assert np.isfinite(dx).all()


def test_float32_agrees_with_float64(rng):
    x = rng.standard_normal((16, 300)) * 3
    g = rng.standard_normal(x.shape)
    y64 = F.softmax(x)
    y32 = F.softmax(x.astype(np.float32))
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(F.softmax_backward(g.astype(np.float32), y32), F.softmax_backward(g, y64), rtol=1e-4, atol=1e-6)
    l64, d64 = F.cross_entropy(x, np.arange(16) % 300)
    l32, d32 = F.cross_entropy(x.astype(np.float32), np.arange(16) % 300)
    assert l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(d32, d64, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_bitwise(dtype, rng, threads):
    x = (rng.standard_normal((256, 1000)) * 3).astype(dtype)
    labels = rng.integers(0, 1000, 256)

    def run():
        y = F.softmax(x)
        return y, F.softmax_backward(np.cos(x), y), F.log_softmax(x), F.cross_entropy(x, labels)[1]

    for a, b in zip(threads(1, run), threads(2, run)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("layer", [fg.Softmax(), fg.Softmax(axis=0), fg.LogSoftmax(), fg.LogSoftmax(axis=0)],
                         ids=["softmax", "softmax-axis0", "log_softmax", "log_softmax-axis0"])
def test_softmax_layers_pass_gradcheck_and_match_the_functions(layer, rng):
    x = rng.standard_normal((4, 5))
    fg.gradcheck(layer, x)  # raises GradcheckError on a wrong backward
    want = (F.softmax if isinstance(layer, fg.Softmax) else F.log_softmax)(x, layer.axis)
    np.testing.assert_array_equal(layer(x), want)
