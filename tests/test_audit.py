"""Audits that run after every other test (marked ``audit``; tests/conftest.py orders them last):
races, parallel loops, specialisations, bounds.

numba hides three failure modes from ordinary tests: a racy ``prange``
accumulation gives slightly wrong numbers without an error; a ``raise`` or an
unsupported construct silently turns a parallel loop serial; and arrays of a
new layout or dtype quietly add compiled specialisations.  Out-of-bounds
indexing is not checked in compiled code, so the small-shape kernel tests are
also run once in pure Python (``NUMBA_DISABLE_JIT=1``), where it raises.
"""

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import background
import fastgrad
import fastgrad.functional as F
from fastgrad import _jit

ROOT = Path(__file__).resolve().parents[1]

#: conftest.pytest_collection_modifyitems runs these last: the specialisation audit counts what
#: the whole suite compiled
pytestmark = pytest.mark.audit


def _ops(dtype):
    """(name, callable returning a tuple of arrays) on shapes much larger than 2 threads."""
    rng = np.random.default_rng(7)

    def arr(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x, W, b = arr(96, 130), arr(70, 130), arr(70)
    logits = arr(300, 257)
    labels = rng.integers(0, 257, 300)
    probs = F.softmax(arr(300, 257))
    ops = []

    def dense():
        y, cache = F.dense_forward(x, W, b, "gelu")
        return (y, *F.dense_backward(np.cos(y), cache))

    def softmax():
        y = F.softmax(logits)
        out = F.log_softmax(logits)
        return y, F.softmax_backward(np.cos(logits), y), out, F.log_softmax_backward(np.cos(logits), out)

    def cross_entropy():
        return F.cross_entropy(logits, labels)[1], F.cross_entropy(logits, probs)[1]

    def activation():
        y, cache = F.activation_forward(logits, "silu")
        return y, F.activation_backward(np.cos(logits), cache)

    xc, Kc, Bc = arr(6, 4, 19, 17), arr(8, 2, 3, 3), arr(8)

    def conv():
        y, cache = F.conv_forward(xc, Kc, Bc, stride=(2, 1), padding="same", dilation=(1, 2), groups=2, activation="tanh")
        return (y, *F.conv_backward(np.cos(y), cache))

    def pool():
        ym, cm = F.max_pool_forward(xc, 3, stride=2, padding=1)
        ya, ca = F.avg_pool_forward(xc, 2)
        return ym, F.max_pool_backward(np.cos(ym), cm), ya, F.avg_pool_backward(np.cos(ya), ca)

    ops += [("dense", dense), ("softmax", softmax), ("cross_entropy", cross_entropy), ("activation", activation)]
    xl, Wl, bl = arr(9, 24, 5), arr(4, 16, 21) * 0.3, arr(4, 16)
    lengths = np.array([9, 3] * 12)

    def lstm():
        (y, (hT, cT)), cache = F.lstm_forward(xl, Wl, bl, lengths=lengths)
        return (y, hT, cT, *F.lstm_backward(np.cos(y), cache, dhT=np.sin(hT), dcT=np.cos(cT)))

    ops += [("conv", conv), ("pool", pool), ("lstm", lstm)]
    ops += [(name, fn) for name, fn in EXTRA_OPS(dtype)]
    return ops


def EXTRA_OPS(dtype):
    """Conv, pooling, LSTM, embedding, norm and dropout ops, from their own test modules' builders when present."""
    found = []
    for module in ("test_conv", "test_lstm", "test_pool", "test_embedding", "test_norm", "test_dropout"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        builder = getattr(mod, "audit_ops", None)
        if builder is not None:
            found += builder(dtype)
    return found


def _force(monkeypatch, twin):
    monkeypatch.setattr(_jit, "pick", lambda k, work: getattr(k, twin))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_twins_race_free_over_50_runs(dtype, monkeypatch, threads):
    for name, op in _ops(dtype):
        _force(monkeypatch, "serial")
        expected = op()
        _force(monkeypatch, "parallel")

        def fifty():
            return [op() for _ in range(50)]

        for run, got in enumerate(threads(2, fifty)):
            for a, b in zip(got, expected):
                assert np.array_equal(a, b), f"{name}: run {run} differs from the serial twin"


PARFORS = textwrap.dedent(
    """
    import importlib
    import json
    import pathlib
    import numba
    import numpy as np
    from fastgrad import _jit

    for path in sorted(pathlib.Path("benchmarks").glob("*.py")):  # kernels of benchmark modules (product_threads)
        source = path.read_text()
        if "@kernel" in source or "@_jit.kernel" in source:
            importlib.import_module(f"benchmarks.{path.stem}")
    found = {}
    for k in _jit.KERNELS:
        fresh = numba.njit(parallel=True, error_model="numpy")(k.py_func)
        fresh.compile(k.signature(np.float32))
        meta = fresh.get_metadata(fresh.signatures[0])
        found[k.name] = max(len(meta["parfors"]), meta["parfor_diagnostics"].count_parfors())
    print(json.dumps(found))
    """
)


def parfor_counts():
    """Background job: {kernel: parfors in a fresh parallel compile of its float32 signature}, in a subprocess."""
    proc = background.run([sys.executable, "-c", PARFORS], timeout=900, cwd=ROOT, env=dict(background.environ(), PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.background(job=parfor_counts)
def test_every_parallel_kernel_has_a_parallel_loop():
    """A fresh parallel compile of each kernel must contain at least one parfor."""
    found = background.result(parfor_counts)
    missed = sorted({k.name for k in _jit.KERNELS} - set(found))
    assert not missed, f"kernels the suite ran but the audit did not compile: {missed}"
    serial = [name for name, count in found.items() if count < 1]
    assert not serial, f"these kernels run serially: {serial}"


def test_at_most_two_specialisations_per_kernel():
    """After the whole suite (this file runs last), one compiled version per dtype at most."""
    for k in _jit.KERNELS:
        for twin in (k.parallel, k.serial):
            sigs = twin.signatures
            assert len(sigs) <= 2, f"{k.__name__}: {len(sigs)} specialisations {sigs}"


SMALL_KERNEL_TESTS = [
    "tests/test_dense.py::test_dense_finite_differences",
    "tests/test_dense.py::test_parallel_twin_equals_serial_twin",
    "tests/test_softmax.py",
]


def pure_python_audit():
    """Background job: the small-shape kernel tests in a pytest subprocess with NUMBA_DISABLE_JIT=1."""
    targets = list(SMALL_KERNEL_TESTS)
    for extra in ("tests/test_conv.py", "tests/test_lstm.py", "tests/test_pool.py", "tests/test_embedding.py", "tests/test_norm.py",
                  "tests/test_dropout.py"):
        if (ROOT / extra).exists():
            targets.append(f"{extra}")
    env = dict(background.environ(), NUMBA_DISABLE_JIT="1", PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow and not nojit_skip", "-p", "no:cacheprovider", *targets]
    return background.run(args, timeout=900, cwd=ROOT, env=env)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="already running without the JIT")
@pytest.mark.background(job=pure_python_audit)
def test_small_kernel_tests_pass_in_pure_python():
    """Out-of-bounds audit: pure Python raises IndexError where compiled code reads garbage."""
    proc = background.result(pure_python_audit)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout
    assert fastgrad.__version__
