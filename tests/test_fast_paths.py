"""The training step's fast paths (issue 22) change no result and loosen no check.

* a layer called again with the shape it last validated skips validation: the
  result is bitwise the one of the validating path, and every bad input (other
  shape, dtype, NaN, a replaced parameter) still goes through the checks;
* ``backward_params`` (a model's lowest layer) skips dL/dx: parameter gradients
  bitwise those of ``backward``;
* remembered kernel launches (``_jit.exact``) give the dispatcher's results,
  and a changed thread count picks again;
* the fused optimizer update is bitwise the per-tensor rule.
"""

import numba
import numpy as np
import pytest

import fastgrad as fg
from fastgrad import _jit
from fastgrad import functional as F
from fastgrad.cases import MLP_LAYERS


def _mlp(dtype, seed=0):
    return fg.Sequential(*[fg.Dense(a, b, act, dtype=dtype, seed=seed) for a, b, act in MLP_LAYERS])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_dense_fast_path_is_bitwise_the_validating_path(dtype, activation, rng):
    layer = fg.Dense(7, 5, activation, dtype=dtype, seed=3)
    x = rng.standard_normal((4, 7)).astype(dtype)
    dy = rng.standard_normal((4, 5)).astype(dtype)
    y_ref, cache = F.dense_forward(x, layer.params["W"], layer.params["b"], activation)
    dx_ref, dW_ref, db_ref = F.dense_backward(dy, cache)
    for call in range(3):  # the first call validates, the next ones take the remembered path
        layer.zero_grad()
        y = layer.forward(x)
        dx = layer.backward(dy)
        assert layer._seen is not None and layer._seen_grads is not None
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(dx, dx_ref)
        np.testing.assert_array_equal(layer.grads["W"], dW_ref)
        np.testing.assert_array_equal(layer.grads["b"], db_ref)
        assert y.dtype == dtype and not np.shares_memory(y, x)


def test_dense_fast_path_keeps_every_check(rng):
    layer = fg.Dense(6, 3, "relu", seed=1)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    layer.forward(x)
    layer.forward(x)  # remembered now
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"Dense\.forward: x contains NaN or Inf"):
        layer.forward(bad)
    with pytest.raises(ValueError, match=r"x\.shape\[1\]=5 does not match in_features=6"):
        layer.forward(x[:, :5].copy())
    # float64 input is converted (not refused) on the remembered shape too
    np.testing.assert_array_equal(layer.forward(x.astype(np.float64)), layer.forward(x))
    # a Fortran-ordered or read-only input goes through the checks and gives the same result
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(layer.forward(np.asfortranarray(x)), layer.forward(ro))
    y = layer.forward(x)
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 3\)"):
        layer.backward(np.ones((3, 3), np.float32))
    layer.backward(np.ones_like(y))
    nan_dy = np.ones_like(y)
    nan_dy[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"Dense\.backward: dy contains NaN or Inf"):
        layer.backward(nan_dy)
    # a backward from a forward of another batch size is checked against that forward
    layer.forward(x[:2].copy())
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3\)"):
        layer.backward(np.ones_like(y))


def test_dense_fast_path_uses_a_replaced_parameter(rng):
    layer = fg.Dense(4, 2, seed=1)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    layer.forward(x)
    layer.forward(x)
    new_W = rng.standard_normal((2, 4)).astype(np.float32)
    layer.params["W"] = new_W
    np.testing.assert_allclose(layer.forward(x), x @ new_W.T + layer.params["b"], rtol=1e-5, atol=1e-5)
    # a replaced parameter of the wrong shape is refused, not used
    layer.params["W"] = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="W.shape"):
        layer.forward(x)
    # in-place updates (what optimizers do) are seen without any re-validation
    layer.params["W"] = new_W
    layer.forward(x)
    new_W *= 2
    np.testing.assert_allclose(layer.forward(x), x @ new_W.T + layer.params["b"], rtol=1e-5, atol=1e-5)
    layer.activation = "relu"  # a changed activation is validated and used
    np.testing.assert_allclose(layer.forward(x), np.maximum(x @ new_W.T + layer.params["b"], 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_params_skips_dx_and_gives_the_same_gradients(dtype, rng):
    x = rng.standard_normal((32, 64)).astype(dtype)
    dy = rng.standard_normal((32, 10)).astype(dtype)
    ref = _mlp(dtype)
    ref.forward(x)
    dx = ref.backward(dy)
    assert dx.shape == x.shape and np.any(dx)
    model = _mlp(dtype)
    model.forward(x)
    assert model.backward_params(dy) is None
    for name, g in ref.grads.items():
        np.testing.assert_array_equal(model.grads[name], g, err_msg=name)
    # the functional form: dx None computes dW and db only, bitwise as with dx
    layer = fg.Dense(64, 10, "tanh", dtype=dtype, seed=2)
    y, cache = F.dense_forward(x, layer.params["W"], layer.params["b"], "tanh")
    dW = np.zeros_like(layer.params["W"])
    db = np.zeros_like(layer.params["b"])
    F.dense_backward_into((None, dW, db), dy, cache)
    ref_dx, ref_dW, ref_db = F.dense_backward(dy, cache)
    np.testing.assert_array_equal(dW, ref_dW)
    np.testing.assert_array_equal(db, ref_db)
    # a single layer's backward_params accumulates as backward does
    layer.forward(x)
    layer.backward_params(dy)
    np.testing.assert_array_equal(layer.grads["W"], ref_dW)


def test_a_user_layer_gets_backward_params_from_its_backward(rng):
    class Scale(fg.Layer):
        def __init__(self, n):
            super().__init__(np.float64)
            self.add_param("g", np.full(n, 2.0))

        def forward(self, x):
            self.x = np.asarray(x, np.float64)
            return self.x * self.params["g"]

        def backward(self, dy):
            self.grads["g"] += np.sum(dy * self.x, axis=0)
            return dy * self.params["g"]

    model = fg.Sequential(Scale(3), fg.Dense(3, 2, dtype=np.float64, seed=0))
    x = rng.standard_normal((4, 3))
    model.forward(x)
    model.backward_params(np.ones((4, 2)))
    assert np.any(model.grads["0.g"]) and np.any(model.grads["1.W"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_steps_are_bitwise_at_one_and_two_threads(dtype, threads, rng):
    x = rng.standard_normal((32, 64)).astype(dtype)
    y = rng.integers(0, 10, 32)

    def run():
        model = _mlp(dtype, seed=5)
        opt = fg.SGD(model, 0.05, momentum=0.9)
        losses = [model.train_step(x, y, fg.CrossEntropyLoss(), opt) for _ in range(4)]
        return losses, model.state_dict()

    one = threads(1, run)
    two = threads(2, run)
    assert one[0] == two[0]
    for name in one[1]:
        np.testing.assert_array_equal(one[1][name], two[1][name], err_msg=name)


def test_exact_launch_matches_the_dispatcher_and_repicks_on_a_thread_change(threads, rng):
    from fastgrad.kernels import util

    a = rng.standard_normal(50)
    fn = _jit.pick(util.all_finite, a.size)
    entry = _jit.exact(fn, (a,))
    if hasattr(fn, "overloads"):  # under NUMBA_DISABLE_JIT the function itself comes back
        assert entry is not fn
    assert entry(a) == fn(a) is True
    a[7] = np.nan
    assert entry(a) == fn(a) is False
    one = threads(1, _jit.pick_state)
    two = threads(2, _jit.pick_state)
    assert (one[0], two[0]) == (1, min(2, numba.config.NUMBA_NUM_THREADS))


@pytest.mark.parametrize("padding", [0, 1])
def test_max_pool_two_by_two_windows_keep_the_first_maximum_and_the_first_nan(padding, threads, rng):
    # the 2 x 2 window is written out in the kernel: each position of a NaN, and ties, checked
    x = rng.integers(0, 3, (3, 2, 6, 6)).astype(np.float64)  # many ties
    for q in range(4):
        x[q % 3, q % 2, 2 * q // 4 + q // 2, q % 2 + 2] = np.nan
    y, cache = threads(1, lambda: F.max_pool_forward(x, 2, padding=padding, check_finite=False))
    y2, cache2 = threads(2, lambda: F.max_pool_forward(x, 2, padding=padding, check_finite=False))
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(cache.arg, cache2.arg)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    for n, c, oh, ow in np.ndindex(y.shape):
        win = xp[n, c, 2 * oh : 2 * oh + 2, 2 * ow : 2 * ow + 2].reshape(-1)
        nans = np.flatnonzero(np.isnan(win))
        k = nans[0] if nans.size else int(np.argmax(win))  # argmax: the first maximum
        i, j = 2 * oh + k // 2 - padding, 2 * ow + k % 2 - padding
        assert cache.arg[n, c, oh, ow] == i * 6 + j
        assert np.array_equal(y[n, c, oh, ow], win[k], equal_nan=True)


class _Arrays:
    """A duck-typed parameter holder (params / grads dicts), the optimizers' plainest source."""

    def __init__(self, params, grads):
        self.params = params
        self.grads = grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "make",
    [
        lambda m: fg.SGD(m, 0.1),
        lambda m: fg.SGD(m, 0.1, momentum=0.9, weight_decay=0.01),
        lambda m: fg.SGD(m, 0.1, momentum=0.8, nesterov=True),
        lambda m: fg.Adam(m, 0.01, weight_decay=0.1),
        lambda m: fg.AdamW(m, 0.01),
    ],
    ids=["sgd", "sgd-momentum-wd", "nesterov", "adam-l2", "adamw"],
)
def test_update_kernels_are_bitwise_the_numpy_rule(make, dtype, rng):
    # the same values twice: C-contiguous arrays (the update kernel) and Fortran-ordered copies
    # (not updatable in place by a flat kernel, so the optimizer takes its NumPy twin)
    shapes = [(5, 7), (7,), (3, 4)]
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    fast = _Arrays({str(i): v.copy() for i, v in enumerate(values)}, {str(i): np.zeros_like(v) for i, v in enumerate(values)})
    # copy(order="F"): a 1-D array stays C-contiguous, but is never the same array
    slow = _Arrays({k: v.copy(order="F") for k, v in fast.params.items()}, {k: g.copy(order="F") for k, g in fast.grads.items()})
    assert not slow.params["0"].flags.c_contiguous
    opt_fast = make(fast)
    opt_slow = make(slow)
    for step in range(4):
        for k in fast.grads:
            g = rng.standard_normal(fast.grads[k].shape).astype(dtype)
            fast.grads[k][...] = g
            slow.grads[k][...] = g
        opt_fast.step()
        opt_slow.step()
        for k in fast.params:
            np.testing.assert_array_equal(fast.params[k], slow.params[k], err_msg=f"step {step}, {k}")
    for k, buffers in opt_fast.state.items():
        for name, buf in buffers.items():
            np.testing.assert_array_equal(buf, opt_slow.state[k][name], err_msg=f"{k}.{name}")
