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


# --------------------------------------------------------------------------
# the fused Dense stack (fastgrad.fused): bitwise the layer-by-layer step
# --------------------------------------------------------------------------


def _layer_by_layer(monkeypatch):
    import fastgrad.model

    monkeypatch.setattr(fastgrad.model, "fused_eligible", lambda *a: False)


def _stack_model(dtype, seed=3):
    return fg.Sequential(
        fg.Dense(12, 16, "tanh", dtype=dtype, seed=seed),
        fg.Dense(16, 8, "relu", bias=False, dtype=dtype, seed=seed + 1),
        fg.Dense(8, 5, dtype=dtype, seed=seed + 2),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_fused_steps_are_bitwise_the_layer_by_layer_steps(dtype, nthreads, threads, monkeypatch, rng):
    x = rng.standard_normal((6, 12)).astype(dtype)
    y = rng.integers(0, 5, 6)

    def run(momentum):
        model = _stack_model(dtype)
        opt = fg.SGD(model, 0.1, momentum=momentum)
        loss = fg.CrossEntropyLoss()
        values = [model.train_step(x, y, loss, opt) for _ in range(3)]
        return model, values, loss.backward()

    fused, fused_values, fused_grad = threads(nthreads, lambda: run(0.9))
    assert fused._fused is not None  # the stack ran
    with monkeypatch.context() as m:
        _layer_by_layer(m)
        plain, plain_values, plain_grad = threads(nthreads, lambda: run(0.9))
        assert plain._fused is None
    assert fused_values == plain_values
    np.testing.assert_array_equal(fused_grad, plain_grad)
    for name in plain.params:
        np.testing.assert_array_equal(fused.params[name], plain.params[name], err_msg=name)
        np.testing.assert_array_equal(fused.grads[name], plain.grads[name], err_msg=name)
    # the layers' caches are the forward's: a later model.backward gives dL/dx as after the plain step
    dy = rng.standard_normal((6, 5)).astype(dtype)
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(dy))


def test_fused_fit_is_bitwise_the_layer_by_layer_fit(monkeypatch, rng):
    x = rng.standard_normal((50, 12))
    y = rng.integers(0, 5, 50)

    def run():
        model = _stack_model(np.float64)
        history = model.fit(x, y, fg.CrossEntropyLoss(), fg.Adam(model, 1e-2), epochs=2, batch_size=16, progress=False)
        return model, history

    fused, h1 = run()
    assert fused._fused is not None
    with monkeypatch.context() as m:
        _layer_by_layer(m)
        plain, h2 = run()
    assert h1["loss"] == h2["loss"] and h1["accuracy"] == h2["accuracy"]
    for name in plain.params:
        np.testing.assert_array_equal(fused.params[name], plain.params[name], err_msg=name)


def test_fused_steps_raise_the_layers_errors(monkeypatch, rng):
    x = rng.standard_normal((6, 12)).astype(np.float32)
    y = rng.integers(0, 5, 6)
    errors = []
    for fused in (True, False):
        with monkeypatch.context() as m:
            if not fused:
                _layer_by_layer(m)
            got = []
            model = _stack_model(np.float32)
            opt = fg.SGD(model, 0.1)
            loss = fg.CrossEntropyLoss()
            model.train_step(x, y, loss, opt)
            bad = x.copy()
            bad[2, 3] = np.nan
            cases = [
                lambda: model.train_step(bad, y, loss, opt),  # the first layer's input
                lambda: model.train_step(x, np.full(6, 7), loss, opt),  # labels out of range
                lambda: model.train_step(x, y[:5], loss, opt),  # labels of another length
            ]
            for case in cases:
                with pytest.raises((ValueError, TypeError)) as info:
                    case()
                got.append((type(info.value), str(info.value)))
            model.layers[1].params["W"][0, 0] = np.inf  # layer 1's output, layer 2's input, is not finite
            with pytest.raises(ValueError) as info:
                model.train_step(x, y, loss, opt)
            got.append((type(info.value), str(info.value)))
            errors.append(got)
            assert (model._fused is not None) == fused
    assert errors[0] == errors[1]
    assert "Dense.forward: x contains NaN or Inf" in errors[0][0][1]
    assert "labels must be in [0, 5)" in errors[0][1][1]


def test_models_the_stack_does_not_cover_take_the_layers(rng):
    x = rng.standard_normal((6, 12)).astype(np.float32)
    y = rng.integers(0, 5, 6)
    loss = fg.CrossEntropyLoss()
    with_activation = fg.Sequential(fg.Dense(12, 8, seed=0), fg.Activation("relu"), fg.Dense(8, 5, seed=1))
    frozen = _stack_model(np.float32)
    frozen.layers[0].trainable = False
    patched = _stack_model(np.float32)
    calls = []
    original = patched.layers[2].forward
    patched.layers[2].forward = lambda v: calls.append(1) or original(v)
    for model in (with_activation, frozen, patched):
        model.train_step(x, y, loss, fg.SGD(model, 0.1))
        assert model._fused is None
    assert calls == [1]
    mse = _stack_model(np.float32)
    mse.train_step(x, np.zeros((6, 5), np.float32), fg.MSELoss(), fg.SGD(mse, 0.1))
    assert mse._fused is None
    # a parameter replaced between steps is the one the next step trains
    model = _stack_model(np.float32)
    opt = fg.SGD(model, 0.1)
    model.train_step(x, y, loss, opt)
    new_W = np.zeros_like(model.layers[2].params["W"])
    model.layers[2].params["W"] = new_W
    model.train_step(x, y, loss, fg.SGD(model, 0.1))
    assert np.any(new_W) and model._fused.arrays.W[2] is new_W


# --------------------------------------------------------------------------
# Conv layers: the remembered path and backward_params
# --------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_fast_path_is_bitwise_the_validating_path_and_keeps_the_checks(stride, rng):
    layer = fg.Conv2D(2, 3, 3, stride=stride, padding=1, activation="relu", dtype=np.float64, seed=4)
    x = rng.standard_normal((2, 2, 6, 5))
    y_ref, cache = F.conv_forward(x, layer.params["K"], layer.params["B"], stride, 1, activation="relu")
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dK_ref, dB_ref = F.conv_backward(dy, cache)
    for call in range(3):
        layer.zero_grad()
        np.testing.assert_array_equal(layer.forward(x), y_ref)
        np.testing.assert_array_equal(layer.backward(dy), dx_ref)
        np.testing.assert_array_equal(layer.grads["K"], dK_ref)
        np.testing.assert_array_equal(layer.grads["B"], dB_ref)
    assert layer._seen is not None and layer._seen_grads is not None
    bad = x.copy()
    bad[0, 1, 2, 2] = np.inf
    with pytest.raises(ValueError, match=r"Conv2D\.forward: x contains NaN or Inf"):
        layer.forward(bad)
    with pytest.raises(ValueError, match=r"x\.shape\[1\]=3 does not match in_channels=2"):
        layer.forward(rng.standard_normal((2, 3, 6, 5)))
    layer.forward(x)
    with pytest.raises(ValueError, match="dy must have shape"):
        layer.backward(dy[:1])
    layer.zero_grad()
    assert layer.backward_params(dy) is None  # dK and dB without dL/dx, bitwise those of backward
    np.testing.assert_array_equal(layer.grads["K"], dK_ref)
    np.testing.assert_array_equal(layer.grads["B"], dB_ref)
    dK = np.zeros_like(dK_ref)
    dB = np.zeros_like(dB_ref)
    F.conv_backward_into((None, dK, dB), dy, cache)
    np.testing.assert_array_equal(dK, dK_ref)
    np.testing.assert_array_equal(dB, dB_ref)


def test_cnn_backward_params_gives_the_gradients_of_backward(rng):
    def cnn():
        return fg.Sequential(
            fg.Conv2D(1, 4, 3, padding=1, activation="relu", dtype=np.float64, seed=0), fg.MaxPool2D(2),
            fg.Flatten(), fg.Dense(16, 3, dtype=np.float64, seed=1),
        )

    x = rng.standard_normal((5, 1, 4, 4))
    dy = rng.standard_normal((5, 3))
    a, b = cnn(), cnn()
    a.forward(x)
    a.backward(dy)
    b.forward(x)
    b.backward_params(dy)
    for name in a.grads:
        np.testing.assert_array_equal(a.grads[name], b.grads[name], err_msg=name)


def test_inputs_the_layers_would_convert_take_the_layer_path_with_the_same_result(monkeypatch, rng):
    x = rng.standard_normal((6, 12))  # float64 into a float32 model, then Fortran order, then read-only
    y = rng.integers(0, 5, 6)
    inputs = [x, np.asfortranarray(x.astype(np.float32)), x.astype(np.float32)]
    inputs[2].flags.writeable = False

    def run():
        model = _stack_model(np.float32)
        opt = fg.SGD(model, 0.1)
        values = [model.train_step(v, y, fg.CrossEntropyLoss(), opt) for v in inputs]
        return values, model.state_dict(), model._fused

    values, state, last = run()
    assert last is None  # none of them was taken as it is
    with monkeypatch.context() as m:
        _layer_by_layer(m)
        ref_values, ref_state, _ = run()
    assert values == ref_values
    for name in state:
        np.testing.assert_array_equal(state[name], ref_state[name])


def test_a_shorter_last_batch_keeps_the_full_batch_stack(rng):
    model = _stack_model(np.float64)
    opt = fg.SGD(model, 0.1)
    loss = fg.CrossEntropyLoss()
    x = rng.standard_normal((7, 12))
    y = rng.integers(0, 5, 7)
    model.train_step(x, y, loss, opt)
    full = model._fused
    model.train_step(x[:3].copy(), y[:3], loss, opt)
    assert model._fused is not full and model._fused.x_shape == (3, 12)
    model.train_step(x, y, loss, opt)
    assert model._fused is full


def test_remembered_calls_are_bounded_and_a_new_shape_is_still_right(rng):
    from fastgrad.functional import common
    from fastgrad.functional import dense as FD

    layer = fg.Dense(3, 2, seed=0)
    for n in range(1, common.REMEMBERED_CALLS + 9):  # more batch sizes than are kept
        x = rng.standard_normal((n, 3)).astype(np.float32)
        np.testing.assert_allclose(layer.forward(x), x @ layer.params["W"].T + layer.params["b"], rtol=1e-5, atol=1e-6)
    assert FD._forward_call.cache_info().currsize <= common.REMEMBERED_CALLS
