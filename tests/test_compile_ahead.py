"""Compiling ahead in a background worker, the main job's task list, and cache writes that fail.

Each test runs in subprocesses (their own numba state); the kernel cache is the
suite's own, warm (conftest), unless a test names an empty one.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code, env=None, timeout=600):
    full = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True, timeout=timeout)


def test_main_job_task_list_is_exactly_what_the_main_job_compiles():
    """cli.MAIN_JOB_TASKS lists every kernel twin (and the fused step) the main job uses, and nothing else."""
    proc = _run(
        """
        import io, contextlib
        from fastgrad import cli, config
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main([]) == 0
        used = set(config.kernels_in_use())
        listed = {" ".join(t) for t in cli.MAIN_JOB_TASKS if t[2] != "stack"}
        # the fused step calls these serial twins from compiled code: a cold run compiles them
        # with it, a warm one loads the step alone (its machine code holds them)
        inside_stack = {f"{k} float32 serial" for k in ("dense.dense_forward", "dense.dense_backward",
                        "activations.activation_dz", "softmax.cross_entropy_labels", "util.all_finite")}
        print("missing from the list:", sorted(used - listed))
        print("listed but unused:", sorted(listed - used - inside_stack))
        stacks = [t for t in cli.MAIN_JOB_TASKS if t[2] == "stack"]
        print("stacks compiled:", all(config.compiled_here(*t) for t in stacks), len(stacks))
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "missing from the list: []" in proc.stdout, proc.stdout
    assert "listed but unused: []" in proc.stdout, proc.stdout
    assert "stacks compiled: True 1" in proc.stdout, proc.stdout


def test_compile_ahead_fills_an_empty_cache_for_the_next_process(tmp_path):
    """The worker compiles the tasks this process does not hold, last first; another process then loads them.

    The second process must add no file to the cache (it compiled nothing) and
    its results must be right; a finished job's marker stops the next run from
    starting a worker at all.
    """
    cache = tmp_path / "cache"
    tasks = [("activations.activation_forward", "float64", "serial"), ("softmax.softmax_forward", "float64", "serial"),
             ("softmax.log_softmax_forward", "float64", "serial")]
    first = _run(
        f"""
        import numpy as np
        import fastgrad.functional as F
        from fastgrad.config import CompileAhead, compiled_here
        F.softmax(np.zeros((2, 4)))  # held here: the worker skips it
        assert compiled_here("softmax.softmax_forward", "float64", "serial")
        ahead = CompileAhead({tasks!r}, marker="test-job")
        assert ahead.started
        assert ahead.join(timeout=300)
        print("done", sorted(ahead.done))
        ahead.close(finished=True)
        again = CompileAhead({tasks!r}, marker="test-job")
        print("second start", again.started)
        again.close()
        """,
        {"FASTGRAD_CACHE_DIR": str(cache)},
    )
    assert first.returncode == 0, first.stderr[-3000:]
    worker_did = "['activations.activation_forward float64 serial', 'softmax.log_softmax_forward float64 serial']"
    assert f"done {worker_did}" in first.stdout, first.stdout
    assert "second start False" in first.stdout
    before = {str(p) for p in cache.rglob("*")}
    second = _run(
        """
        import numpy as np
        import fastgrad.functional as F
        x = np.linspace(-2, 2, 12).reshape(3, 4)
        y, _ = F.activation_forward(x, "tanh")
        assert np.allclose(y, np.tanh(x))
        ls = F.log_softmax(x)
        assert np.allclose(ls, x - np.log(np.exp(x).sum(axis=1, keepdims=True)))
        print("ok")
        """,
        {"FASTGRAD_CACHE_DIR": str(cache)},
    )
    assert second.returncode == 0 and "ok" in second.stdout, second.stderr[-3000:]
    added = sorted({str(p) for p in cache.rglob("*")} - before)
    assert not added, f"the second process compiled what the worker should have cached: {added[:5]}"


def test_a_cache_write_that_fails_warns_once_and_the_kernels_still_compute(tmp_path):
    """A full disk (simulated: every cache write raises ENOSPC) costs the cache, never a call."""
    proc = _run(
        """
        import errno, warnings
        import numpy as np
        from numba.core import caching

        def full_disk(self, sig, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        caching.Cache._save_overload = full_disk
        warnings.simplefilter("always")
        import fastgrad.functional as F
        x = np.linspace(-2, 2, 12).reshape(3, 4)
        assert np.allclose(F.softmax(x), np.exp(x) / np.exp(x).sum(axis=1, keepdims=True))
        y, _ = F.activation_forward(x, "relu")
        assert np.array_equal(y, np.maximum(x, 0))
        print("ok")
        """,
        {"FASTGRAD_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    assert proc.stderr.count("could not write to the kernel cache") == 1, proc.stderr
    assert "No space left on device" in proc.stderr
