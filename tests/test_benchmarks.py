"""Smoke test of the benchmark instrument (benchmarks/): peers agree, writers write, README block.

Fast (tiny shapes, in-process, no subprocesses); needs no matplotlib, and torch only for the
LSTM step guard (tests/needs.py: a failure under CI, where the test extra installs it).
"""

import json

import numpy as np
import pytest

from benchmarks import peer_fastgrad, peer_numpy, report, worker
from benchmarks.__main__ import parse_args
from benchmarks.cases import OPS, Case, all_cases, flops, make_inputs, targets
from benchmarks.update_readme import END, START, replace_block, update_readme
from needs import needs

TINY = [
    Case("dense", "T", (4, 8, 5)),
    Case("conv2d", "T", (2, 3, 6, 4, 3)),
    Case("lstm", "T", (3, 2, 4, 5)),
    Case("softmax", "T", (3, 7)),
    Case("train_mlp", "T", (4,)),
    Case("train_cnn", "T", (4,)),
]


@pytest.mark.parametrize("case", TINY, ids=lambda c: c.op)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_peer_equals_fastgrad(case, dtype):
    """The worker's correctness guard passes: forward outputs and gradients (or SGD step) agree."""
    check = worker.check_case(peer_fastgrad, case, dtype)
    assert check["fwd"]["status"] == "ok", check
    assert check["fwd+bwd"]["status"] == "ok", check


def test_guard_catches_wrong_output():
    ref = [np.ones((2, 3))]
    assert worker.compare([np.ones((3, 2))], ref, "float64")["status"] == "FAIL"
    assert worker.compare([1.01 * np.ones((2, 3))], ref, "float64")["status"] == "FAIL"
    assert worker.compare([np.full((2, 3), np.nan)], ref, "float64")["status"] == "FAIL"
    assert worker.compare([np.ones((2, 3))], ref, "float32")["status"] == "ok"


def test_time_calls_counts_and_excludes_warmup():
    calls = []
    times = worker.time_calls(lambda: calls.append(1), warmup=2, repeats=4, min_repeats=2, budget=10.0)
    assert len(times) == 4 and len(calls) == 6 and all(t >= 0 for t in times)


def test_numpy_conv_and_lstm_peers_against_loops():
    """The im2col conv and the NumPy LSTM against direct formulas on tiny shapes."""
    inp = make_inputs("conv2d", (2, 3, 6, 4, 3), "float64")
    y = peer_numpy.build(Case("conv2d", "T", (2, 3, 6, 4, 3)), "float64", inp).forward()[0]
    x, K, B = inp["x"], inp["K"], inp["B"]
    direct = np.zeros_like(y)
    for i in range(4):
        for j in range(4):
            direct[:, :, i, j] = np.einsum("nckl,mckl->nm", x[:, :, i : i + 3, j : j + 3], K) + B
    np.testing.assert_allclose(y, direct, rtol=1e-12)
    # y - B is linear in x and in K, so <dy, y> = <dx, x> + <dB, B> = <dK, K> + <dB, B>
    dx, dK, dB = peer_numpy.build(Case("conv2d", "T", (2, 3, 6, 4, 3)), "float64", inp).fwdbwd()
    lhs = np.sum(inp["dy"] * y)
    assert np.isclose(lhs, np.sum(dx * x) + np.sum(dB * B)) and np.isclose(lhs, np.sum(dK * K) + np.sum(dB * B))

    inp = make_inputs("lstm", (3, 2, 4, 5), "float64")
    y = peer_numpy.build(Case("lstm", "T", (3, 2, 4, 5)), "float64", inp).forward()[0]
    h = c = np.zeros((2, 5))
    sig = lambda z: 1 / (1 + np.exp(-z))
    for t in range(3):
        z = np.einsum("ghk,nk->ngh", inp["W"], np.concatenate([h, inp["x"][t]], axis=1)) + inp["b"]
        c = sig(z[:, 0]) * c + sig(z[:, 1]) * np.tanh(z[:, 3])
        h = sig(z[:, 2]) * np.tanh(c)
        np.testing.assert_allclose(y[t], h, rtol=1e-12)


def test_flops_and_case_table():
    assert flops("dense", (2, 3, 4), "fwd") == 48 and flops("dense", (2, 3, 4), "fwd+bwd") == 144
    assert flops("conv2d", (1, 2, 5, 3, 3), "fwd") == 2 * 3 * 3 * 3 * 2 * 9
    assert flops("lstm", (2, 1, 3, 4), "fwd") == 2 * 2 * 16 * 7
    assert {c.op for c in all_cases()} == set(OPS)
    assert {c.size for c in all_cases(sizes=("S", "M"))} == {"S", "M"}
    assert targets("dense", "L", "fwd") == [("peak", "numpy", 85.0)]
    assert targets("lstm", "M", "fwd+bwd", "float64") == [("ratio", "torch", 1.5)]
    assert targets("lstm", "M", "fwd+bwd", "float32") == [("ratio", "torch", 1.0)]
    assert targets("train_mlp", "S", "fwd+bwd") == [("ratio", "torch", 2.0), ("ratio", "jax", 1.0)] and targets("conv2d", "L", "fwd") == []
    quick = parse_args(["--quick"])
    assert quick.sizes == ["S", "M"] and quick.name == "quick" and parse_args([]).name == "latest"
    assert quick.rounds == 1 and parse_args([]).rounds == 3 and parse_args(["--rounds", "5"]).rounds == 5
    assert parse_args(["--", "--threads", "1"]).threads == 1  # python -m fastgrad bench -- ARGS


def _fake_data():
    rows = []
    for lib, ms in (("fastgrad", 1.0), ("numpy", 2.0)):
        for pass_ in ("fwd", "fwd+bwd"):
            rows.append({
                "lib": lib, "case": "dense/L", "op": "dense", "size": "L", "shape": [512, 1024, 1024], "dtype": "float32",
                "pass": pass_, "status": "ok", "median_ms": ms, "min_ms": ms, "max_ms": ms, "gflops": 100.0 / ms,
                "check": {"status": "ok" if lib == "fastgrad" else "reference", "max_rel_err": 1e-7},
            })
    rows.append({"lib": "torch", "case": "dense/L", "op": "dense", "size": "L", "shape": [512, 1024, 1024],
                 "dtype": "float32", "pass": "fwd", "status": "n/a", "error": "torch is not installed"})
    return {
        "meta": {"date": "2024-01-01T00:00:00", "quick": True, "threads": 2, "cores": 2, "cpu": "test", "python": "3"},
        "peak": {"n": 64, "blas": "test", "threads": 2, "float32": {"best_gflops": 125.0}, "float64": {"best_gflops": 60.0}},
        "compile": {"cold": {"total_s": 12.0}, "warm": {"total_s": 3.0}},
        "libs": {"fastgrad": {"version": "0.1.0"}, "numpy": {"version": "2"}, "torch": {"version": None}},
        "rows": rows,
    }


def test_report_writers(tmp_path):
    data = _fake_data()
    rows = report.combine(data)
    assert [r["pass"] for r in rows] == ["fwd", "fwd+bwd"]
    assert rows[0]["peers"]["numpy"]["ratio"] == pytest.approx(2.0)
    assert rows[0]["pct_peak"] == pytest.approx(80.0)  # 100 GFLOP/s of a 125 GFLOP/s peak
    assert rows[0]["peers"]["torch"]["status"] == "n/a" and rows[1]["peers"]["torch"]["status"] == "missing"
    assert [t["met"] for t in rows[0]["targets"]] == [False]  # 80 % of the peak < 85 %
    assert [t["met"] for t in rows[1]["targets"]] == [None]  # torch n/a

    report.write_markdown(data, tmp_path / "r.md")
    report.write_json(data, tmp_path / "r.json")
    text = (tmp_path / "r.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| case"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(report.COLUMNS) == list(report.columns(data))
    assert "| dense/L | 512x1024x1024 | f32 | fwd | 1.00 |" in text and "2.00x" in text
    assert "NOT met" in text  # the warm-start target (3 s > 2 s)
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == data["rows"]


def test_rounds_merge_to_the_median_and_before_gets_columns(tmp_path):
    data = _fake_data()
    extra = []
    for rnd, ms in ((1, 3.0), (2, 0.5)):
        for r in data["rows"]:
            if r["lib"] == "fastgrad":
                extra.append(dict(r, median_ms=ms, min_ms=ms, max_ms=ms, gflops=100.0 / ms, round=rnd,
                                  check={"status": "skipped"}))
    for r in data["rows"] + extra:
        if r["lib"] == "fastgrad":
            extra.append(dict(r, lib="before", median_ms=4 * r["median_ms"], min_ms=4 * r["min_ms"], max_ms=4 * r["max_ms"],
                              gflops=r["gflops"] / 4))
    data["rows"] += extra
    rows = report.combine(data)
    # fastgrad's rounds took 1, 3 and 0.5 ms: the median is 1 ms, min-max over all rounds
    assert rows[0]["median_ms"] == 1.0 and (rows[0]["min_ms"], rows[0]["max_ms"]) == (0.5, 3.0)
    assert rows[0]["gflops"] == pytest.approx(100.0) and rows[0]["checks"]["fastgrad"]["status"] == "ok"
    assert rows[0]["peers"]["before"]["ratio"] == pytest.approx(4.0)
    assert rows[0]["peers"]["numpy"]["ratio"] == pytest.approx(2.0)
    cols = report.columns(data)
    assert cols.index("before ms") == cols.index("x torch") + 1
    text = report.markdown(data)
    assert "4.00x" in text and "| before ms | x before |" in text
    failed = dict(data["rows"][0], status="error", error="boom", round=3)
    data["rows"].append(failed)
    assert report.combine(data)[0]["fastgrad"] == "error"


def test_report_png(tmp_path):
    pytest.importorskip("matplotlib")
    assert report.write_png(_fake_data(), tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nintro\n{START}\nold table\n{END}\n\nrest\n")
    update_readme(readme, "| new | table |")
    assert readme.read_text() == f"# title\n\nintro\n{START}\n| new | table |\n{END}\n\nrest\n"
    with pytest.raises(ValueError):
        replace_block("no markers here", "x")
    with pytest.raises(ValueError):
        replace_block(f"{END}\n{START}", "x")


@pytest.mark.parametrize("case", ["row-LSTM", "char-LM"])
def test_lstm_steps_agree_with_pytorch_after_two_sgd_steps(case):
    # the LSTM step benchmark's guard: the weights' conversion to torch's layout (gate order, one
    # bias) and the update must give torch's losses, first and second step
    needs("torch")
    from benchmarks import lstm_steps

    losses = {}
    for lib in ("fastgrad", "torch"):
        step = lstm_steps.BUILD[lib](case, "float64", lstm_steps.make_inputs(case, "float64"))
        losses[lib] = [step(), step()]
    assert losses["fastgrad"][1] != losses["fastgrad"][0]  # the step trained
    np.testing.assert_allclose(losses["fastgrad"], losses["torch"], rtol=1e-10)
