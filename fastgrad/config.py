"""Threads, configuration report and kernel warm-up."""

from __future__ import annotations

import os
import platform
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numba
import numpy as np

from . import _jit
from ._checks import float_dtype, positive_int


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in parallel kernels (1 <= n <= NUMBA_NUM_THREADS).

    Results do not depend on it: every kernel is bitwise identical at any count.
    """
    n = positive_int(n, "n", "set_num_threads")
    limit = numba.config.NUMBA_NUM_THREADS
    if n > limit:
        raise ValueError(f"set_num_threads: n={n} exceeds NUMBA_NUM_THREADS={limit} (set that environment variable before import)")
    numba.set_num_threads(n)


def get_num_threads() -> int:
    return int(numba.get_num_threads())


def _threading_layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:
        return f"not chosen yet (NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER})"


#: numba's threading layers and the extension module each one loads
LAYERS = ("omp", "tbb", "workqueue")

_LAYER_PROBE = """
import importlib, sys
layer = sys.argv[1]
try:
    import numba
    import fastgrad._jit  # loads the tbb wheel's libtbb when TBB is the requested layer
    from numba.np.ufunc import parallel
    if layer == "tbb":
        parallel._check_tbb_version_compatible()
    importlib.import_module("numba.np.ufunc." + {"omp": "omppool", "tbb": "tbbpool", "workqueue": "workqueue"}[layer])
    parallel._launch_threads()
    print("ok", numba.threading_layer())
except Exception as exc:
    print("error", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
"""


def _tbb_installed() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("tbb")
        return True
    except PackageNotFoundError:
        import ctypes

        try:
            ctypes.CDLL(_jit.TBB_LIBRARY.get(sys.platform, "libtbb.so.12"))
            return True  # a system or conda libtbb
        except OSError:
            return False


_LAYER_STATUS: dict | None = None


def threading_layers() -> dict:
    """{layer: None if it loads on this machine, else why not (one line)} for omp, tbb, workqueue.

    Each layer is tried in a fresh interpreter the documented way
    (``NUMBA_THREADING_LAYER=<layer>``, fastgrad imported first), so the answer
    does not depend on (or change) the layer this process has chosen.
    """
    global _LAYER_STATUS
    if _LAYER_STATUS is not None:
        return dict(_LAYER_STATUS)
    here = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    status = {}
    procs = {}
    for layer in LAYERS:
        if layer == "tbb" and not _tbb_installed():
            status[layer] = "package not installed (pip install tbb)"
            continue
        env = dict(os.environ, NUMBA_THREADING_LAYER=layer, PYTHONPATH=path, FASTGRAD_DISABLE_CACHE="1", PYTHONWARNINGS="ignore")
        procs[layer] = subprocess.Popen(
            [sys.executable, "-c", _LAYER_PROBE, layer], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for layer, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            status[layer] = "the probe did not finish in 120 s"
            continue
        words = out.strip().split(None, 1)
        if words[:1] == ["ok"]:
            status[layer] = None
        elif words[:1] == ["error"]:
            status[layer] = words[1] if len(words) > 1 else "unknown error"
        else:
            lines = err.strip().splitlines() or [f"exit code {proc.returncode}"]
            status[layer] = lines[-1]
    _LAYER_STATUS = {layer: status[layer] for layer in LAYERS}
    return dict(_LAYER_STATUS)


def _layers_text() -> str:
    parts = []
    for layer, reason in threading_layers().items():
        if reason is None:
            note = " (libtbb of the pip wheel, loaded by fastgrad)" if layer == "tbb" and _jit.TBB_PRELOADED else ""
            parts.append(f"{layer} loads{note}")
        else:
            parts.append(f"{layer} does not load: {reason}")
    return "; ".join(parts)


def environment_lines() -> list:
    """One line each: CPU, the ISA numba compiles for, versions, loadable threading layers."""
    import llvmlite

    info = _jit.cpu_info()
    lanes = info["lanes"]
    caches = ", ".join(f"{k} {v // 1024} KiB" for k, v in info["caches"].items())
    return [
        f"cpu: {info['model']} (LLVM target {info['llvm_cpu']}, {os.cpu_count()} logical cores; {caches})",
        f"vector isa: {info['isa']}{' + fma' if info['fma'] else ''}, {info['vector_bits']}-bit vectors "
        f"({lanes['float32']} float32 / {lanes['float64']} float64 lanes)",
        f"versions: numba {numba.__version__}, llvmlite {llvmlite.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}",
        f"threading layers: {_layers_text()}",
    ]


def _core_text() -> str:
    """The register tile and cache blocks the product core uses for each dtype."""
    from .kernels import products

    parts = []
    for dt in ("float32", "float64"):
        kc, mc, nc = products.cache_blocks(dt)
        parts.append(f"{dt} tile {products.MR} x {products.nr_of(dt)}, KC {kc} MC {mc} NC {nc}")
    return "; ".join(parts)


def config_text() -> str:
    from . import __version__

    info = _jit.cpu_info()
    lanes = info["lanes"]
    rows = [
        ("fastgrad", __version__),
        ("python", platform.python_version()),
        ("numpy", np.__version__),
        ("numba", numba.__version__),
        ("cpu", f"{info['model']} (LLVM target {info['llvm_cpu']}, {platform.machine()})"),
        ("vector isa", f"{info['isa']}{' + fma' if info['fma'] else ''}, {info['vector_bits']}-bit "
                       f"({lanes['float32']} float32 / {lanes['float64']} float64 lanes)"),
        ("caches", ", ".join(f"{k} {v // 1024} KiB" for k, v in info["caches"].items())),
        ("product core", _core_text()),
        ("threads", f"{get_num_threads()} of {numba.config.NUMBA_NUM_THREADS}"),
        ("threading layer", _threading_layer()),
    ]
    rows += [(f"  {layer}", "loads" if reason is None else f"does not load: {reason}") for layer, reason in threading_layers().items()]
    rows += [
        ("kernel cache", str(_jit.cache_dir()) if _jit.cache_enabled() else "disabled"),
        ("fastmath flags", ", ".join(sorted(_jit.FASTMATH))),
        ("serial below", f"{_jit.PARALLEL_MIN_WORK} multiply-adds"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def show_config() -> str:
    """Print (and return) versions, CPU and vector ISA, threads and threading layers, cache directory."""
    text = config_text()
    print(text)
    return text


def _kernel(name: str) -> _jit.Kernel:
    for k in _jit.KERNELS:
        if k.name == name:
            return k
    raise ValueError(f"warmup: no kernel named {name!r}")


def compile_task(name: str, dt, twin: str) -> float:
    """Compile (or load) one kernel twin ("serial" or "parallel") for one dtype; returns seconds."""
    start = time.perf_counter()
    _kernel(name).compile(np.dtype(dt), twin)
    return time.perf_counter() - start


def _compile_cost(k: _jit.Kernel) -> int:
    """Lines of source of a kernel: the order in which the workers take kernels (largest first)."""
    import inspect

    return len(inspect.getsource(k.py_func).splitlines())


def _default_jobs() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def _compile_in_workers(tasks: list, jobs: int, verbose: bool) -> dict:
    """Compile ``tasks`` [(name, dtype, twin)] in ``jobs`` fresh processes into the shared cache.

    numba compiles on one core; separate processes use all of them.  Each worker
    (``python -m fastgrad._warmjob``) reads tasks from stdin and answers one line
    per task.  Subprocesses rather than multiprocessing: a spawned child would
    re-run the user's unguarded ``__main__``.  While the workers compile, this
    process loads each finished task from the cache.  A worker that fails only
    costs time: whatever it did not compile is compiled here afterwards.
    Returns {"name dtype twin": seconds} for the tasks the workers finished.
    """
    # the workers must import this very fastgrad (a source checkout on sys.path included)
    here = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, FASTGRAD_CACHE_DIR=str(_jit.cache_dir().parent), PYTHONPATH=path, PYTHONWARNINGS="ignore")
    pending = list(tasks)
    lock = threading.Lock()
    finished = queue.Queue()  # tasks a worker compiled, or None when a driver stops
    done = {}

    def drive():
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fastgrad._warmjob"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, env=env,
            )
        except OSError:
            finished.put(None)
            return
        try:
            while True:
                with lock:
                    if not pending:
                        break
                    task = pending.pop(0)
                try:
                    proc.stdin.write(" ".join(task) + "\n")
                    proc.stdin.flush()
                    answer = proc.stdout.readline().split()
                except (OSError, ValueError):
                    break
                if answer[:1] != ["ok"]:
                    break  # dead or failing worker: the caller compiles the rest itself
                with lock:
                    done[" ".join(task)] = float(answer[1])
                finished.put(task)
        finally:
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:  # a worker that died with input still buffered
                    pass
            proc.wait()
            finished.put(None)

    for _ in range(jobs):
        threading.Thread(target=drive, daemon=True).start()
    running = jobs
    while running:
        task = finished.get()
        if task is None:
            running -= 1
            continue
        compile_task(*task)  # load it here while the workers go on compiling
        if verbose:
            key = " ".join(task)
            print(f"  {key:<44}{done[key]:7.2f} s  (compiled in a worker process)", flush=True)
    return done


def warmup(dtypes=("float32", "float64"), verbose=False, jobs=None, kernels=None) -> dict:
    """Compile (or load from cache) every kernel, serial and parallel twin, for ``dtypes``.

    The list is the kernel registry itself (every ``@kernel`` in
    ``fastgrad.kernels``), each compiled for the exact argument types a call
    passes (the kernels' parameter annotations), so no later call compiles.
    ``kernels``: only these (names such as ``"dense"`` for a module or
    ``"dense.dense_forward"`` for one kernel).  With a writable kernel cache and
    ``jobs`` > 1 (default: the number of cores, at most 4), the compiling is
    spread over ``jobs`` worker processes that fill the shared cache, and this
    process then loads every kernel from it; ``jobs=1`` compiles everything
    here.  Returns {"kernel dtype twin": seconds} (compile time in the worker,
    or time in this process when it did the work itself).
    """
    if isinstance(dtypes, (str, type, np.dtype)):
        dtypes = (dtypes,)
    dts = [float_dtype(d, "dtypes", "warmup") for d in dtypes]
    jobs = _default_jobs() if jobs is None else positive_int(jobs, "jobs", "warmup")
    chosen = list(_jit.KERNELS)
    if kernels is not None:
        wanted = [kernels] if isinstance(kernels, str) else list(kernels)
        chosen = [k for k in chosen if k.name in wanted or k.name.split(".")[0] in wanted]
        if not chosen:
            raise ValueError(f"warmup: kernels={kernels!r} names no kernel; names look like 'dense' or 'dense.dense_forward'")
    # Serial twins first: they compile (and cache on disk) the shared helpers, which the
    # parallel twins, compiled next in whichever worker is free, then load instead of
    # compiling again.  Largest kernels first within each half, so the workers finish together.
    chosen.sort(key=lambda k: -_compile_cost(k))
    tasks = [(k.name, dt.name, twin) for twin in ("serial", "parallel") for k in chosen for dt in dts]
    times = {}
    if jobs > 1 and _jit.cache_enabled():
        if verbose:
            print(f"compiling {len(tasks)} kernels in {jobs} worker processes into {_jit.cache_dir()}", flush=True)
        times.update(_compile_in_workers(tasks, jobs, verbose))
    for task in tasks:  # what no worker finished is compiled (or loaded) here
        key = " ".join(task)
        if key not in times:
            times[key] = compile_task(*task)
            if verbose:
                print(f"  {key:<44}{times[key]:7.2f} s", flush=True)
    return times
