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

from . import _jit, _workspace
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


def release_memory() -> int:
    """Give back what fastgrad keeps between calls on the calling thread; returns the bytes released.

    Layers and functional ops reuse their results' arrays once nobody holds
    them (up to 128 MiB per thread) and one scratch buffer per thread (up to
    256 MiB), so a training loop does not page-fault fresh memory every step.
    After a large one-off computation this returns that memory to the allocator.
    """
    return _workspace.release()


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
        mr, nr = products.tile_shape(dt)
        parts.append(f"{dt} tile {mr} x {nr}, KC {kc} MC {mc} NC {nc}")
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
    """Compile (or load) one task for one dtype; returns seconds.

    ``twin`` "serial" or "parallel": that twin of the kernel ``name``; "stack": the fused
    training step (:mod:`fastgrad.fused`) of the model that ``fastgrad.<name>.build`` makes
    (for example ``examples.mlp``).
    """
    start = time.perf_counter()
    if twin == "stack":
        from . import fused

        fused.compile_for(_built_model(name, dt))
    else:
        _kernel(name).compile(np.dtype(dt), twin)
    return time.perf_counter() - start


def _built_model(name: str, dt):
    from importlib import import_module

    return import_module(f"fastgrad.{name}").build(dtype=np.dtype(dt))


def compiled_here(name: str, dt, twin: str) -> bool:
    """True when this process already holds the compiled code of the task (see :func:`compile_task`)."""
    if twin == "stack":
        from . import fused

        return fused.compiled_for(_built_model(name, dt))
    k = _kernel(name)
    dispatcher = k.serial if twin == "serial" else k.parallel
    overloads = getattr(dispatcher, "overloads", None)
    return overloads is None or k.signature(np.dtype(dt)) in overloads


def kernels_in_use() -> list:
    """Every kernel twin this process has compiled or loaded, as "name dtype twin" strings."""
    out = []
    for k in _jit.KERNELS:
        for twin in ("serial", "parallel"):
            for dt in ("float32", "float64"):
                if getattr(k.serial, "overloads", None) is not None and compiled_here(k.name, dt, twin):
                    out.append(f"{k.name} {dt} {twin}")
    return out


def _compile_cost(k: _jit.Kernel) -> int:
    """Lines of source of a kernel: the order in which the workers take kernels (largest first)."""
    import inspect

    return len(inspect.getsource(k.py_func).splitlines())


def default_jobs() -> int:
    """The number of warm-up worker processes by default: the cores this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


class _Worker:
    """One ``python -m fastgrad._warmjob`` process compiling tasks into the shared kernel cache.

    Subprocesses rather than multiprocessing: a spawned child would re-run the
    user's unguarded ``__main__``.  :meth:`compile` returns the worker's seconds,
    or None once the worker failed (the caller then compiles the task itself).
    """

    def __init__(self):
        self._lock = threading.Lock()  # close() may come from another thread than compile()
        # the worker must import this very fastgrad (a source checkout on sys.path included)
        here = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, FASTGRAD_CACHE_DIR=str(_jit.cache_dir().parent), PYTHONPATH=path, PYTHONWARNINGS="ignore")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fastgrad._warmjob"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, env=env,
            )
        except OSError:
            self.proc = None

    def compile(self, task) -> float | None:
        proc = self.proc
        if proc is None:
            return None
        try:
            proc.stdin.write(" ".join(task) + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline().split()
        except (OSError, ValueError, AttributeError):
            answer = []
        if answer[:1] != ["ok"]:
            self.close()  # dead or failing worker
            return None
        return float(answer[1])

    def close(self, kill: bool = False) -> None:
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is None:
            return
        if kill:
            proc.kill()  # numba writes each cache file whole, then renames it: nothing half-written is left
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):  # a worker that died with input still buffered
                pass
        proc.wait()


def _compile_in_workers(tasks: list, jobs: int, verbose: bool) -> dict:
    """Compile ``tasks`` [(name, dtype, twin)] in ``jobs`` fresh processes into the shared cache.

    numba compiles on one core; separate processes use all of them.  While the
    workers compile, this process loads each finished task from the cache.  A
    worker that fails only costs time: whatever it did not compile is compiled
    here afterwards.  Returns {"name dtype twin": seconds} for the tasks the
    workers finished.
    """
    pending = list(tasks)
    lock = threading.Lock()
    finished = queue.Queue()  # tasks a worker compiled, or None when a driver stops
    done = {}

    def drive():
        worker = _Worker()
        try:
            while True:
                with lock:
                    if not pending:
                        break
                    task = pending.pop(0)
                seconds = worker.compile(task)
                if seconds is None:
                    break
                with lock:
                    done[" ".join(task)] = seconds
                finished.put(task)
        finally:
            worker.close()
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


class CompileAhead:
    """Compile a job's kernels in one background worker process while the job runs.

    ``tasks``: (name, dtype, twin) in the order the job first needs them.  The
    worker takes them from the end (what the job needs last), skipping what this
    process already holds, and saves each to the shared cache; the job, going
    from the start, then loads those from the cache on their first call instead
    of compiling them.  On 2 cores the two halves compile at once.  Nothing is
    started without a writable cache, or when ``marker`` (a name) says an
    earlier run of the same job on this CPU with these kernel sources finished:
    everything is cached then, or with ``FASTGRAD_COMPILE_AHEAD=0`` in the
    environment (one process compiles everything).  :meth:`close` stops the worker and, with
    ``finished=True``, writes the marker.
    """

    def __init__(self, tasks, marker: str | None = None):
        self.pending = [tuple(t) for t in tasks]
        self.done = {}
        self._stop = threading.Event()
        self._worker = None
        self._marker = None
        self._thread = None
        if not _jit.cache_enabled() or os.environ.get("FASTGRAD_COMPILE_AHEAD", "") in ("0", "no", "off", "false"):
            return
        if marker is not None:
            cpu = _jit.cpu_info()
            self._marker = _jit.cache_dir() / f"{marker}.{cpu['llvm_cpu']}.{cpu['vector_bits']}.done"
            if self._marker.exists():
                return
        self._thread = threading.Thread(target=self._drive, name="fastgrad-compile-ahead", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def _drive(self):
        self._worker = _Worker()
        try:
            while self.pending and not self._stop.is_set():
                task = self.pending.pop()
                if compiled_here(*task):
                    continue
                seconds = self._worker.compile(task)
                if seconds is None:
                    break
                self.done[" ".join(task)] = seconds
        finally:
            self._worker.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the worker has gone through every task; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def close(self, finished: bool = False) -> None:
        """Stop the worker (killed if still compiling) and, when the job ``finished``, write the marker."""
        self._stop.set()
        if self._worker is not None:
            self._worker.close(kill=True)
        if self._thread is not None:
            self._thread.join()
        if finished and self._marker is not None:
            try:
                self._marker.touch()
            except OSError:
                pass


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
    jobs = default_jobs() if jobs is None else positive_int(jobs, "jobs", "warmup")
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
