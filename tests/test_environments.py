"""Threading layers, Python threads, fork, spawn and the kernel cache, each in a subprocess.

numba failures here are process-level (an abort, a killed child, a stale
cache), so every case runs a small script in a fresh interpreter and checks
its exit code and output.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent(
    """
    import os, sys, threading
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from probe_child import run as result


    def main(mode):
        ref = result()  # the parent has now run parallel kernels
        out = [None] * 4

        def check(i):
            out[i] = all(np.array_equal(result(), ref) for _ in range(10))

        if mode == "main":
            check(0)
            ok = out[0]
        elif mode == "threads":
            ts = [threading.Thread(target=check, args=(i,)) for i in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            ok = all(out)
        elif mode == "fork":
            pid = os.fork()
            if pid == 0:
                check(0)
                os._exit(0 if out[0] else 3)
            _, status = os.waitpid(pid, 0)
            ok = os.waitstatus_to_exitcode(status) == 0
        else:
            import multiprocessing as mp
            with mp.get_context("spawn").Pool(2) as pool:
                ok = all(np.array_equal(r, ref) for r in pool.map(result, range(2)))
        import numba
        print(mode, numba.threading_layer(), "OK" if ok else "MISMATCH")
        return ok


    if __name__ == "__main__":
        sys.exit(0 if main(sys.argv[1]) else 1)
    """
)

CHILD = textwrap.dedent(
    """
    import numpy as np
    import fastgrad.functional as F

    def run(i=0):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((192, 160)); W = rng.standard_normal((128, 160)); b = rng.standard_normal(128)
        y, cache = F.dense_forward(x, W, b, "tanh")
        dx, dW, db = F.dense_backward(np.cos(y), cache)
        return np.concatenate([y.ravel(), dx.ravel(), dW.ravel(), db])
    """
)


def _layers():
    """Every numba threading layer; TBB is skipped (with the reason shown) only when its package is missing.

    The cells run the documented way: NUMBA_THREADING_LAYER=<layer> and nothing else
    (fastgrad loads the tbb wheel's libtbb itself).  A layer that is installed but
    cannot load fails its cells with the reason fastgrad.config.threading_layers() found.
    """
    from fastgrad.config import LAYERS, _tbb_installed

    params = []
    for layer in LAYERS:
        if layer == "tbb" and not _tbb_installed():
            params.append(pytest.param(layer, marks=pytest.mark.skip(reason="tbb package not installed (pip install tbb)")))
        else:
            params.append(layer)
    return params


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.py").write_text(PROBE)
    (d / "probe_child.py").write_text(CHILD)
    return d


def _run(args, env_extra=None, cwd=None, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("mode", ["main", "threads", "fork", "spawn"])
@pytest.mark.parametrize("layer", _layers())
def test_threading_matrix_no_crash_same_results(layer, mode, probe_dir):
    from fastgrad.config import threading_layers

    reason = threading_layers()[layer]
    assert reason is None, f"threading layer {layer} is installed but does not load: {reason}"
    proc = _run([sys.executable, str(probe_dir / "probe.py"), mode], {"NUMBA_THREADING_LAYER": layer, "NUMBA_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert f"{mode} {layer} OK" in proc.stdout
    if layer == "omp" and mode == "fork":
        # the guard ran the child serially and said so once
        assert proc.stderr.count("not fork-safe") == 1, proc.stderr


def test_unwritable_cache_dir_warns_once_and_still_computes(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code = "import fastgrad.functional as F, numpy as np; print(F.softmax(np.zeros((2, 4)))[0, 0])"
    try:
        for env in ({"FASTGRAD_CACHE_DIR": str(ro / "cache")}, {"HOME": str(ro), "FASTGRAD_CACHE_DIR": "", "NUMBA_CACHE_DIR": ""}):
            proc = _run([sys.executable, "-c", code], env)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert proc.stdout.strip() == "0.25"
            if os.geteuid() != 0:  # root may write anywhere: then there is nothing to warn about
                assert proc.stderr.count("not writable") == 1, proc.stderr
    finally:
        ro.chmod(0o700)


def test_three_cold_starts_on_one_shared_cache(tmp_path):
    code = (
        "import numpy as np, fastgrad.functional as F\n"
        "x = np.linspace(-1, 1, 64 * 48).reshape(64, 48); W = np.cos(np.arange(32 * 48)).reshape(32, 48)\n"
        "y, c = F.dense_forward(x, W, None, 'tanh'); dx, dW, _ = F.dense_backward(np.ones_like(y), c)\n"
        "ref = np.tanh(x @ W.T); dz = 1 - ref ** 2\n"
        "assert np.allclose(y, ref) and np.allclose(dx, dz @ W) and np.allclose(dW, dz.T @ x)\n"
        "print('ok')\n"
    )
    env = {"FASTGRAD_CACHE_DIR": str(tmp_path / "shared")}
    full = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    # and a warm start from the cache they wrote agrees too
    proc = _run([sys.executable, "-c", code], env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_cache_directory_is_versioned_by_kernel_sources(tmp_path):
    """Editing any kernel source (a helper included) moves the cache to a new directory."""
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "fastgrad", pkg / "fastgrad", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import fastgrad._jit as j; print(j.cache_dir())"
    env = {"PYTHONPATH": str(pkg), "FASTGRAD_CACHE_DIR": str(tmp_path / "c")}
    first = _run([sys.executable, "-c", code], env, cwd=tmp_path).stdout.strip()
    helper = pkg / "fastgrad" / "kernels" / "activations.py"
    helper.write_text(helper.read_text().replace("_LEAKY_SLOPE = 0.01", "_LEAKY_SLOPE = 0.02"))
    second = _run([sys.executable, "-c", code], env, cwd=tmp_path).stdout.strip()
    assert first and second and first != second
    leaky = (
        "import numpy as np, fastgrad.functional as F; "
        "print(F.activation_forward(np.array([-1.0]), 'leaky_relu')[0][0])"
    )
    assert _run([sys.executable, "-c", leaky], env, cwd=tmp_path).stdout.strip() == "-0.02"


WARM = textwrap.dedent(
    """
    import sys
    import numpy as np
    import fastgrad as fg
    import fastgrad.functional as F

    if sys.argv[1] == "broken":
        sys.executable = "/bin/false"  # every worker dies at once
    times = fg.warmup("float64", verbose=True, jobs=2, kernels=["activations"])  # the cheapest module
    print(sorted(times))
    y, _ = F.activation_forward(np.array([-1.0, 2.0]), "relu")
    print("relu", y.tolist())
    """
)


@pytest.mark.parametrize("workers", ["ok", "broken"])
def test_warmup_compiles_in_worker_processes_into_the_shared_cache(tmp_path, workers):
    script = tmp_path / "warm.py"
    script.write_text(WARM)
    cache = tmp_path / "cache"
    out = _run([sys.executable, str(script), workers], {"FASTGRAD_CACHE_DIR": str(cache)}, cwd=tmp_path).stdout
    kernels = ("activation_forward", "activation_backward", "activation_dz")
    expected = sorted(f"activations.{k} float64 {twin}" for k in kernels for twin in ("serial", "parallel"))
    assert str(expected) in out, out
    assert "relu [0.0, 2.0]" in out
    in_worker = out.count("(compiled in a worker process)")
    # a healthy pool compiles every twin in the workers; a dead one leaves the work to the caller
    assert in_worker == (2 * len(kernels) if workers == "ok" else 0), out
    assert list(cache.rglob("*activation_forward*.nbi")), "nothing was cached"


@pytest.mark.parametrize("foreign", [False, True])
def test_bench_outside_a_source_tree_exits_2_with_one_line(tmp_path, foreign):
    """As from a wheel: no fastgrad benchmarks on sys.path (or some other package called benchmarks)."""
    env = {"PYTHONPATH": ""}
    if foreign:
        (tmp_path / "benchmarks").mkdir()
        (tmp_path / "benchmarks" / "__init__.py").write_text("")
        env["PYTHONPATH"] = str(tmp_path)
    pkg = tmp_path / "site"
    import shutil

    shutil.copytree(ROOT / "fastgrad", pkg / "fastgrad", ignore=shutil.ignore_patterns("__pycache__"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pkg), env["PYTHONPATH"]) if p)
    proc = subprocess.run([sys.executable, "-m", "fastgrad", "bench", "--quick"], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "source tree" in lines[0] and "python -m benchmarks" in lines[0], proc.stderr


def test_show_config_reports_isa_caches_and_every_threading_layer():
    from fastgrad import _jit
    from fastgrad.config import LAYERS, config_text, environment_lines

    text = config_text()
    info = _jit.cpu_info()
    assert info["isa"] in text and f"{info['vector_bits']}-bit" in text
    for layer in LAYERS:
        assert f"  {layer}" in text
    lines = environment_lines()
    assert len(lines) == 4 and lines[0].startswith("cpu: ") and lines[-1].startswith("threading layers: ")
    assert all(layer in lines[-1] for layer in LAYERS)
