"""fg.gradcheck checks the very object it is given, and gives it back bitwise unchanged; fg.gradcheck_fn.

The injection test is the issue's acceptance test: a 1 % error put into each
parameter gradient and into dL/dx of every built-in layer type, by replacing
``backward`` on the instance (the way one tries a change), is caught by the
check, which therefore runs that instance and not a rebuilt copy.
"""

import numpy as np
import pytest

import fastgrad as fg
import fastgrad.functional as F
from fastgrad.cases import LAYER_CASES


def _cases():
    """(layer, x) for the first case of every layer type in the shared table, float32 (the default dtype)."""
    seen = set()
    out = []
    for case in LAYER_CASES:
        layer = case.layer(np.float32)
        if type(layer) not in seen:
            seen.add(type(layer))
            out.append((layer, case.input(seed=7)))
    return out


def test_the_cases_cover_every_builtin_layer_type():
    assert {type(layer).__name__ for layer, _ in _cases()} == set(fg.Layer.registry)


def _inject(layer, target):
    """Replace backward on the instance: 1 % off in grads[target] or, for target "x", in dL/dx."""
    original = layer.backward

    def backward(dy, *args, **kwargs):
        dx = original(dy, *args, **kwargs)
        if target == "x":
            return 1.01 * dx
        layer.grads[target] *= 1.01
        return dx

    layer.backward = backward


def _x_row(layer):
    """["x"], or [] for a layer reading integer indices (Embedding): they have no gradient."""
    return [] if layer.takes_indices else ["x"]


def _targets():
    return [(i, t) for i, (layer, _) in enumerate(_cases()) for t in [*_x_row(layer), *layer.params]]


@pytest.mark.parametrize("mode", ["full", "directional"])
@pytest.mark.parametrize("case,target", _targets(), ids=[f"{type(_cases()[i][0]).__name__}-{t}" for i, t in _targets()])
def test_one_percent_error_injected_on_the_instance_is_caught(case, target, mode):
    layer, x = _cases()[case]
    fg.gradcheck(layer, x, mode=mode)  # the layer as built passes
    _inject(layer, target)
    with pytest.raises(fg.GradcheckError) as info:
        fg.gradcheck(layer, x, mode=mode)
    rows = {r.name: r.ok for r in info.value.report.rows}
    assert rows == {name: name != target for name in [*_x_row(layer), *layer.params]}
    assert "backward" in vars(layer)  # the instance's own method survived the check


def test_a_method_replaced_on_a_sublayer_is_checked():
    model = fg.Sequential(fg.Dense(4, 3, "tanh", seed=1), fg.Dense(3, 2, seed=2))
    x = np.random.default_rng(0).standard_normal((2, 4))
    _inject(model.layers[1], "b")
    with pytest.raises(fg.GradcheckError) as info:
        fg.gradcheck(model, x)
    assert [r.name for r in info.value.report.checks() if not r.ok] == ["1.b", "accumulation"]


def _snapshot(obj):
    """Every attribute of obj and its sub-layers: the object itself and, for arrays and dicts of arrays, a copy."""
    layers = [obj] + list(getattr(obj, "layers", []))
    snap = []
    for layer in layers:
        attrs = dict(vars(layer))
        copies = {}
        for name, value in attrs.items():
            if isinstance(value, np.ndarray):
                copies[name] = value.copy()
            elif isinstance(value, dict):
                copies[name] = {k: (v, v.copy() if isinstance(v, np.ndarray) else None) for k, v in value.items()}
        snap.append((layer, attrs, copies))
    return snap


def _assert_unchanged(snap):
    for layer, attrs, copies in snap:
        now = vars(layer)
        assert list(now) == list(attrs)
        for name, value in attrs.items():
            assert now[name] is value, name
        for name, saved in copies.items():
            if isinstance(saved, np.ndarray):
                assert now[name].dtype == saved.dtype and np.array_equal(now[name], saved)
                continue
            assert list(now[name]) == list(saved)
            for k, (obj, copy) in saved.items():
                assert now[name][k] is obj, (name, k)
                if copy is not None:
                    assert obj.dtype == copy.dtype and obj.tobytes() == copy.tobytes(), (name, k)


def _used(layer, x):
    """After a forward and backward in float32: nonzero grads and a saved cache, as mid-training."""
    y = layer.forward(x.astype(np.float32) if x.dtype.kind == "f" else x)
    layer.backward(np.ones_like(y))
    return layer


@pytest.mark.parametrize("case", range(len(_cases())), ids=[type(c[0]).__name__ for c in _cases()])
def test_float32_layer_is_bitwise_unchanged_after_a_check_that_passes_fails_or_raises(case):
    layer, x = _cases()[case]
    _used(layer, x)
    snap = _snapshot(layer)
    assert fg.gradcheck(layer, x).ok
    _assert_unchanged(snap)
    assert np.dtype(layer.dtype) == np.float32

    if layer.params:
        _inject(layer, next(iter(layer.params)))
        with pytest.raises(fg.GradcheckError):
            fg.gradcheck(layer, x)
        del layer.backward
        _assert_unchanged(snap)

    calls = []
    original = layer.forward

    def forward(*args):
        calls.append(1)
        if len(calls) == 4:  # in the middle of the finite differences
            raise RuntimeError("boom")
        return original(*args)

    layer.forward = forward
    with pytest.raises(RuntimeError, match="boom"):
        fg.gradcheck(layer, x)
    del layer.forward
    _assert_unchanged(snap)


def test_optimizer_trajectory_is_the_same_with_a_gradcheck_in_the_middle():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((16, 5)).astype(np.float32), rng.integers(0, 3, 16)
    runs = []
    for check in (False, True):
        model = fg.Sequential(fg.Dense(5, 6, "tanh", seed=1), fg.Dense(6, 3, seed=2))
        opt = fg.Adam(model, 1e-2)
        loss = fg.CrossEntropyLoss()
        for step in range(4):
            opt.zero_grad()
            loss(model.forward(x), y)
            model.backward(loss.backward())
            if check and step == 1:
                fg.gradcheck(model, x[:2])
            opt.step()
        runs.append({k: v.copy() for k, v in model.params.items()})
    for k in runs[0]:
        assert runs[0][k].dtype == np.float32 and np.array_equal(runs[0][k], runs[1][k]), k


def _counting(layer):
    calls = []
    original = layer.forward

    def forward(x):
        calls.append(1)
        return original(x)

    layer.forward = forward
    return calls


def test_directional_cost_does_not_depend_on_the_size_and_full_counts_every_element():
    rng = np.random.default_rng(0)
    for n, m in [(3, 2), (300, 200)]:
        layer = fg.Dense(n, m, "tanh", dtype=np.float64, seed=1)
        calls = _counting(layer)
        report = fg.gradcheck(layer, rng.standard_normal((4, n)), mode="directional", directions=3)
        assert len(calls) == 2 + 2 * 3 * 3  # two forwards (the second for the accumulation check), then 2 per direction for x, W, b
        assert [r.checked for r in report.rows[:3]] == [3, 3, 3]
    layer = fg.Dense(3, 2, dtype=np.float64, seed=1)
    calls = _counting(layer)
    fg.gradcheck(layer, rng.standard_normal((4, 3)))
    assert len(calls) == 2 + 2 * (12 + 6 + 2)


class _Scale(fg.Layer):
    """y_sk = g_k x_sk, written as a user would; ``accumulate=False`` assigns instead of adding,
    ``fixed_dtype`` casts the output to that dtype instead of self.dtype."""

    def __init__(self, n, dtype=np.float32, accumulate=True, fixed_dtype=None):
        super().__init__(dtype)
        self.n, self.accumulate, self.fixed_dtype = n, accumulate, fixed_dtype
        self.add_param("g", np.linspace(0.5, 1.5, n))

    def forward(self, x):
        self.x = np.asarray(x, dtype=self.dtype)
        return (self.x * self.params["g"]).astype(self.fixed_dtype or self.dtype)

    def backward(self, dy):
        dg = np.sum(dy * self.x, axis=0)
        if self.accumulate:
            self.grads["g"] += dg
        else:
            self.grads["g"][...] = dg
        return dy * self.params["g"]


def test_user_layer_without_dtype_in_its_config_is_checked():
    # the case: the old rebuild failed with "cannot build Scale from its config"
    layer = _Scale(4)
    report = fg.gradcheck(layer, np.random.default_rng(0).standard_normal((3, 4)))
    assert [r.name for r in report.rows] == ["x", "g"] and report.accumulation.ok and report.ok
    assert layer.params["g"].dtype == np.float32 and "x" not in vars(layer)


def test_backward_that_consumes_its_cache_is_checked():
    class Consuming(_Scale):
        def backward(self, dy):
            dx = super().backward(dy)
            del self.x  # frees the saved input: a second backward needs a new forward
            return dx

    assert fg.gradcheck(Consuming(3), np.ones((2, 3))).ok


def test_backward_that_assigns_instead_of_adding_fails_the_accumulation_row():
    with pytest.raises(fg.GradcheckError) as info:
        fg.gradcheck(_Scale(4, accumulate=False), np.random.default_rng(0).standard_normal((3, 4)))
    assert [r.name for r in info.value.report.checks() if not r.ok] == ["accumulation"]


def test_forward_with_a_fixed_float32_dtype_is_told_to_use_self_dtype():
    with pytest.raises(TypeError, match="self.dtype"):
        fg.gradcheck(_Scale(4, fixed_dtype=np.float32), np.ones((2, 4)))


def test_attribute_aliasing_a_parameter_follows_it_into_float64():
    class Aliased(_Scale):
        def __init__(self, n):
            super().__init__(n)
            self.g = self.params["g"]  # the user keeps a second name for the parameter

        def forward(self, x):
            self.x = np.asarray(x, dtype=self.dtype)
            return self.x * self.g

    layer = Aliased(3)
    fg.gradcheck(layer, np.random.default_rng(1).standard_normal((2, 3)))
    assert layer.g is layer.params["g"] and layer.g.dtype == np.float32


# -- gradcheck_fn -------------------------------------------------------------------
def test_gradcheck_fn_checks_the_functional_api():
    rng = np.random.default_rng(2)
    x, W, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    before = [a.copy() for a in (x, W, b)]
    report = fg.gradcheck_fn(lambda x, W, b: F.dense_forward(x, W, b, "silu"), F.dense_backward, (x, W, b), with_cache=True)
    assert [r.name for r in report.rows] == ["x", "W", "b"] and report.ok
    assert all(np.array_equal(a, c) for a, c in zip((x, W, b), before))
    # b=None passes through unchecked (dense_backward returns db=None)
    report = fg.gradcheck_fn(lambda x, W, b: F.dense_forward(x, W, b), F.dense_backward, (x, W, None), with_cache=True)
    assert [r.name for r in report.rows] == ["x", "W"]
    # a VJP taking the output, and a single input
    fg.gradcheck_fn(F.softmax, lambda dy, x: F.softmax_backward(dy, F.softmax(x)), x)
    # nested outputs: the LSTM's (y, (hT, cT)), with gradients for h0 and c0
    xs = (rng.standard_normal((3, 2, 2)), rng.standard_normal((4, 3, 5)) * 0.5, rng.standard_normal((4, 3)),
          rng.standard_normal((2, 3)), rng.standard_normal((2, 3)))
    report = fg.gradcheck_fn(F.lstm_forward, lambda dy, cache: F.lstm_backward(dy[0], cache, *dy[1]), xs,
                             with_cache=True, mode="directional")
    assert [r.name for r in report.rows] == ["x", "W", "b", "h0", "c0"]


def _rms(x, g):
    return g * x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-6)


def _rms_vjp(dy, x, g, dx_scale=1.0, dg_scale=1.0):
    r = np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-6)
    xhat = x / r
    gdy = g * dy
    return dx_scale * (gdy - xhat * np.mean(gdy * xhat, axis=1, keepdims=True)) / r, dg_scale * np.sum(dy * xhat, axis=0)


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_gradcheck_fn_catches_a_one_percent_error_in_each_input(mode):
    rng = np.random.default_rng(4)
    inputs = (rng.standard_normal((3, 6)), rng.uniform(0.5, 1.5, 6))
    assert fg.gradcheck_fn(_rms, _rms_vjp, inputs, mode=mode).ok
    for bad, scales in (("x", (1.01, 1.0)), ("g", (1.0, 1.01))):
        with pytest.raises(fg.GradcheckError) as info:
            fg.gradcheck_fn(_rms, lambda dy, x, g: _rms_vjp(dy, x, g, *scales), inputs, mode=mode)
        assert {r.name: r.ok for r in info.value.report.rows} == {"x": bad != "x", "g": bad != "g"}


def test_gradcheck_options_and_vjp_results_are_validated():
    layer, x = fg.Dense(3, 2), np.ones((2, 3))
    with pytest.raises(ValueError, match="mode"):
        fg.gradcheck(layer, x, mode="sampled")
    with pytest.raises(ValueError, match="directions"):
        fg.gradcheck(layer, x, mode="directional", directions=0)
    with pytest.raises(TypeError, match="max_points"):
        fg.gradcheck(layer, x, max_points=2.5)
    with pytest.raises(TypeError, match="vjp"):
        fg.gradcheck_fn(_rms, None, (x, np.ones(3)))
    with pytest.raises(ValueError, match="one gradient per input"):
        fg.gradcheck_fn(_rms, lambda dy, x, g: _rms_vjp(dy, x, g)[0], (x, np.ones(3)))
    with pytest.raises(ValueError, match=r"gradient for g must be an array of shape \(3,\)"):
        fg.gradcheck_fn(_rms, lambda dy, x, g: (_rms_vjp(dy, x, g)[0], np.ones(4)), (x, np.ones(3)))
    with pytest.raises(TypeError, match=r"\(y, cache\)"):
        fg.gradcheck_fn(_rms, _rms_vjp, (x, np.ones(3)), with_cache=True)
    with pytest.raises(TypeError, match="inputs\\[1\\]"):
        fg.gradcheck_fn(_rms, _rms_vjp, (x, np.ones(3, dtype=int)))


def test_report_prints_mode_and_rows():
    text = str(fg.gradcheck(fg.Dense(3, 2, seed=0), np.ones((2, 3)), mode="directional", directions=2))
    assert "directional check" in text and "dirs" in text
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["x", "W", "b", "accumulation"]
