"""The suite's longest checks run as jobs beside the other tests, on the core they leave idle.

Three tests are each one process doing 40-110 s of work (a fresh parallel
compile of every kernel, a cold warm-up in an empty cache, the pure-Python
bounds audit) while the rest of the suite runs in one process: run one after
the other, they were over half of a CI run (AMD EPYC Zen 5, 2 cores: 147 s of
the 255 s of pytest; on a Zen 3 machine about 330 s of 650 s).  Such a test
names its job with ``@pytest.mark.background(job=f)``; once collection knows the
test was selected, tests/conftest.py starts the job (a callable, run in a
thread of a pool of 2 that waits on the subprocesses it starts), and the test
asserts on ``result(job)``, which waits for it.  A job nobody started (the test
was run some other way) runs when its result is asked for.  Jobs never start
under NUMBA_DISABLE_JIT=1 (the pure-Python audit runs the suite's own files).
"""

import os
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor

#: two at a time: with the main test process, one more runnable process than cores, never idle
WORKERS = 2

_pool = None
_futures = {}
_running = set()
_lock = threading.Lock()
_environ = {}


def start(job) -> None:
    """Start ``job()`` in the pool unless it has started already."""
    global _pool
    with _lock:
        if job in _futures:
            return
        if _pool is None:
            _environ.update(os.environ)
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="fastgrad-tests-background")
        _futures[job] = _pool.submit(job)


def result(job):
    """What ``job()`` returned (its exception is raised here), waiting for it; starts it if nobody did."""
    with _lock:
        future = _futures.get(job)
        if future is None:
            future = Future()
            _futures[job] = future
            run_here = True
        else:
            run_here = False
    if run_here:
        try:
            future.set_result(job())
        except BaseException as exc:
            future.set_exception(exc)
    return future.result()


def environ() -> dict:
    """A copy of the environment as it was when the first job started (jobs start while tests
    monkeypatch os.environ: a job must not pick up one test's cache dir or thread count)."""
    with _lock:
        return dict(_environ or os.environ)


def run(args, timeout, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(args, capture_output=True, text=True, ...) that :func:`stop` can kill."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    with _lock:
        _running.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(args, timeout, out, err) from None
    finally:
        with _lock:
            _running.discard(proc)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def stop() -> None:
    """At the end of the session: kill what still runs (an interrupted or failed-early session) and wait for the pool."""
    with _lock:
        procs = list(_running)
        pool = _pool
    for proc in procs:
        proc.kill()
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
