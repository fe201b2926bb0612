"""Smoke test of benchmarks/overhead.py: the launch capture counts what a call really launches.

Timings are not asserted (noisy machines); the structure is: which kernels a
call launches, how many, that a recording can be repeated, that replays do
not touch the model, and that the report is put together from those counts.
"""

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import _jit

overhead = pytest.importorskip("benchmarks.overhead")


def op_kernels(launches):
    """The kernels of the op itself, in launch order (check_finite's util.* kernels left out)."""
    return [la.kernel for la in launches if not overhead.is_check(la.kernel)]


@pytest.fixture
def no_finite_checks():
    saved = fg.get_check_finite()
    fg.set_check_finite(False)
    yield
    fg.set_check_finite(saved)


def test_record_dense_forward_is_one_launch(no_finite_checks):
    layer = fg.Dense(4, 4, seed=0)
    x = np.ones((1, 4), np.float32)
    layer.forward(x)  # remembered in this thread before the recording: the capture must still see the launch
    for _ in range(2):  # a second recording of the same call sees the same launch
        rec = overhead.record(lambda: layer.forward(x))
        assert [la.kernel for la in rec.launches] == ["dense.dense_forward"]
        assert rec.launches[0].twin == "serial"  # 16 multiply-adds: pick's serial twin
        assert rec.bypassed == 0
    assert _jit.pick.__module__ == "fastgrad._jit" and _jit.pick.__name__ == "pick"  # the patch is undone
    # the replay reproduces the call's output on its private copy of the arguments
    la = rec.launches[0]
    la.reset()
    la.entry(*la.args)
    np.testing.assert_allclose(la.args[0], layer.forward(x), rtol=1e-6)


def test_record_counts_activation_and_checks():
    layer = fg.Dense(4, 4, "relu", seed=0)
    x = np.ones((1, 4), np.float32)
    y = layer.forward(x)
    rec = overhead.record(lambda: layer.backward(np.ones_like(y)))
    assert op_kernels(rec.launches) == ["activations.activation_dz", "dense.dense_backward"]
    checks = [la for la in rec.launches if overhead.is_check(la.kernel)]
    assert len(rec.launches) == 2 + len(checks) and len(checks) >= 1  # check_finite is on by default: dy is checked


def test_run_one_row_and_one_step():
    res = overhead.run(rounds=1, dtypes=("float32",), ops=["Dense.forward"], steps=["MLP step"], target_s=2e-4, warmup=1)
    (row,) = res["ops"]
    assert row["name"] == "Dense.forward" and row["kind"] == "layer" and row["bypassed"] == 0
    assert [k["kernel"] for k in row["kernels"] if not overhead.is_check(k["kernel"])] == ["dense.dense_forward"]
    assert row["launches"] == len(row["kernels"]) == 1 + row["check_launches"]
    assert row["call_us"] > 0 and row["kernels_us"] > 0
    assert row["overhead_us"] == pytest.approx(row["call_us"] - row["kernels_us"], abs=1e-2)

    (step,) = res["steps"]
    n_layers = len(fg.cases.MLP_LAYERS)
    assert step["layers"] == n_layers and step["bypassed"] == 0
    assert step["launches"] == len(step["kernels"]) >= 2 * n_layers
    names = [k["kernel"] for k in step["kernels"]]
    assert names.count("dense.dense_forward") == n_layers and names.count("dense.dense_backward") == n_layers
    assert sum("cross_entropy" in n for n in names) == 1
    assert names.index("softmax.cross_entropy_labels") > max(i for i, n in enumerate(names) if n == "dense.dense_forward")
    phases = {p["phase"]: p for p in step["phases"]}
    assert list(phases) == ["zero_grad", "forward", "loss", "backward", "step"]
    assert phases["zero_grad"]["launches"] == 0
    assert phases["forward"]["launches"] - phases["forward"]["check_launches"] == n_layers
    assert phases["backward"]["launches"] >= n_layers and phases["step"]["launches"] >= 1
    # call and kernel replays are timed apart: under load either can come out larger, so no order between them
    assert step["call_us"] > 0 and step["kernels_us"] > 0
    assert step["overhead_us"] == pytest.approx(step["call_us"] - step["kernels_us"], abs=1e-2)

    md = overhead.format_markdown(res)
    assert "| op / layer / step | call µs | kernels µs | overhead µs | launches |" in md
    assert sum(line.startswith("|") for line in md.splitlines()) == 4  # header, rule, one op row, one step row
    assert "Dense.forward" in overhead.format_text(res)


def test_replays_do_not_touch_the_model():
    (case,) = [c for c in overhead.step_cases() if c.name == "MLP step"]
    built = case.build("float32")
    built.step()
    rec = overhead.record(built.step)
    model_arrays = list(built.model.params.values()) + list(built.model.grads.values())
    before = [a.copy() for a in model_arrays]
    for la in rec.launches:  # optimizer and backward launches would change params / grads if they were not copies
        la.entry(*la.args)
    for a, b in zip(model_arrays, before):
        np.testing.assert_array_equal(a, b)


def test_parse_args_defaults():
    args = overhead.parse_args([])
    assert (args.rounds, args.dtype, args.quick, args.json, args.markdown) == (3, "both", False, None, False)
