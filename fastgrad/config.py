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


def config_text() -> str:
    import llvmlite.binding as llvm

    from . import __version__

    try:
        cpu = llvm.get_host_cpu_name()
    except Exception:  # pragma: no cover - depends on the llvmlite build
        cpu = "unknown"
    rows = [
        ("fastgrad", __version__),
        ("python", platform.python_version()),
        ("numpy", np.__version__),
        ("numba", numba.__version__),
        ("cpu", f"{cpu} ({platform.machine()})"),
        ("threads", f"{get_num_threads()} of {numba.config.NUMBA_NUM_THREADS}"),
        ("threading layer", _threading_layer()),
        ("kernel cache", str(_jit.cache_dir()) if _jit.cache_enabled() else "disabled"),
        ("fastmath flags", ", ".join(sorted(_jit.FASTMATH))),
        ("serial below", f"{_jit.PARALLEL_MIN_WORK} multiply-adds"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def show_config() -> str:
    """Print (and return) versions, threads, threading layer, cache directory."""
    text = config_text()
    print(text)
    return text


#: (name, function(dtype)) pairs run by warmup(); each family module registers its own
WARMUPS: list = []


def register_warmup(name):
    def wrap(func):
        WARMUPS.append((name, func))
        return func

    return wrap


#: Relative compile cost of each warm-up entry (parallel + serial twins), measured
#: cold on the 2-core box, float32: the biggest go first so the workers finish together.
_WARM_COST = {"lstm": 25, "conv": 17, "dense": 11, "softmax": 10, "pool": 7, "activation": 1}


def _run_warm(name: str, dt, twin: str) -> float:
    """Run one warm-up entry for one twin ("serial" or "parallel"); returns seconds."""
    func = dict(WARMUPS)[name]
    saved = _jit.PARALLEL_MIN_WORK
    start = time.perf_counter()
    try:
        # 0: even the tiny warm-up calls take the parallel twin
        _jit.PARALLEL_MIN_WORK = 0 if twin == "parallel" else saved
        func(np.dtype(dt))
    finally:
        _jit.PARALLEL_MIN_WORK = saved
    return time.perf_counter() - start


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
        _run_warm(*task)  # load it here while the workers go on compiling
        if verbose:
            key = " ".join(task)
            print(f"  {key:<30}{done[key]:7.2f} s  (compiled in a worker process)", flush=True)
    return done


def warmup(dtypes=("float32", "float64"), verbose=False, jobs=None) -> dict:
    """Compile (or load from cache) every kernel, serial and parallel twin, for ``dtypes``.

    With a writable kernel cache and ``jobs`` > 1 (default: the number of cores,
    at most 4), the compiling is spread over ``jobs`` worker processes that fill
    the shared cache, and this process then loads every kernel from it.
    ``jobs=1`` compiles everything in this process.  Returns {"name dtype twin":
    seconds} (compile time in the worker, or time in this process when it did
    the work itself).  Later calls then run at full speed at once.
    """
    if isinstance(dtypes, (str, type, np.dtype)):
        dtypes = (dtypes,)
    dts = [float_dtype(d, "dtypes", "warmup") for d in dtypes]
    jobs = _default_jobs() if jobs is None else positive_int(jobs, "jobs", "warmup")
    # Serial twins first: they compile (and cache on disk) the shared helpers, which the
    # parallel twins, compiled next in whichever worker is free, then load instead of
    # compiling again.  Biggest families first within each half.
    tasks = [
        (name, dt.name, twin)
        for twin in ("serial", "parallel")
        for name, _ in sorted(WARMUPS, key=lambda w: -_WARM_COST.get(w[0], 5))
        for dt in dts
    ]
    times = {}
    if jobs > 1 and _jit.cache_enabled():
        if verbose:
            print(f"compiling {len(tasks)} kernel groups in {jobs} worker processes into {_jit.cache_dir()}", flush=True)
        times.update(_compile_in_workers(tasks, jobs, verbose))
    for task in tasks:  # what no worker finished is compiled (or loaded) here
        key = " ".join(task)
        if key not in times:
            times[key] = _run_warm(*task)
            if verbose:
                print(f"  {key:<30}{times[key]:7.2f} s", flush=True)
    return times


def _tiny(shape, dt, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dt)


@register_warmup("dense")
def _warm_dense(dt):
    from . import functional as F

    y, cache = F.dense_forward(_tiny((2, 3), dt), _tiny((4, 3), dt), _tiny((4,), dt), "tanh")
    F.dense_backward(np.ones_like(y), cache)


@register_warmup("activation")
def _warm_activation(dt):
    from . import functional as F

    y, cache = F.activation_forward(_tiny((5,), dt), "relu")
    F.activation_backward(np.ones_like(y), cache)


@register_warmup("softmax")
def _warm_softmax(dt):
    from . import functional as F

    x = _tiny((2, 3), dt)
    y = F.softmax(x)
    F.softmax_backward(np.ones_like(y), y)
    out = F.log_softmax(x)
    F.log_softmax_backward(np.ones_like(out), out)
    F.cross_entropy(x, np.array([0, 2]))
    F.cross_entropy(x, F.softmax(_tiny((2, 3), dt, 1)))


@register_warmup("conv")
def _warm_conv(dt):
    from . import functional as F

    for x, K in ((_tiny((1, 2, 5), dt), _tiny((2, 2, 3), dt)), (_tiny((1, 2, 5, 5), dt), _tiny((2, 2, 3, 3), dt))):
        y, cache = F.conv_forward(x, K, _tiny((2,), dt), padding=1, activation="relu")
        F.conv_backward(np.ones_like(y), cache)


@register_warmup("pool")
def _warm_pool(dt):
    from . import functional as F

    for x in (_tiny((1, 2, 4), dt), _tiny((1, 2, 4, 4), dt)):
        for fwd, bwd in ((F.max_pool_forward, F.max_pool_backward), (F.avg_pool_forward, F.avg_pool_backward)):
            y, cache = fwd(x, 2)
            bwd(np.ones_like(y), cache)


@register_warmup("lstm")
def _warm_lstm(dt):
    from . import functional as F

    hidden, features = 3, 2
    x = _tiny((2, 2, features), dt)
    (y, _), cache = F.lstm_forward(x, _tiny((4, hidden, hidden + features), dt), _tiny((4, hidden), dt))
    F.lstm_backward(np.ones_like(y), cache)
