import numba
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def threads():
    """Run a callable at a given thread count: threads(1, f) -> f() at 1 thread."""
    saved = numba.get_num_threads()

    def run(n, func):
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        try:
            return func()
        finally:
            numba.set_num_threads(saved)

    yield run
    numba.set_num_threads(saved)


def pytest_collection_modifyitems(session, config, items):
    """Tests marked ``audit`` run after all the others, whatever their file names.

    The specialisation audit counts what the whole suite compiled, and the
    race audit should see kernels warmed by everything else; a stable sort
    keeps every other test in its collected order.
    """
    items.sort(key=lambda item: item.get_closest_marker("audit") is not None)


def pytest_collection_finish(session):
    """Start the background jobs of the selected tests marked ``background`` (tests/background.py)."""
    import os

    import background

    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        return
    for item in session.items:
        marker = item.get_closest_marker("background")
        if marker is not None:
            background.start(marker.kwargs["job"])


def pytest_sessionfinish(session, exitstatus):
    import background

    background.stop()


def pytest_report_header(config):
    """Before the tests, so a red run on another machine explains itself: CPU, vector ISA, versions, threading layers."""
    from fastgrad.config import environment_lines

    return environment_lines()


def pytest_sessionstart(session):
    """On a cold kernel cache, compile every kernel in worker processes first.

    numba compiles on one core; fastgrad.warmup spreads the work over all of
    them, which takes minutes off a cold CI run.  With a warm cache this is skipped.
    """
    import fastgrad
    from fastgrad import _jit

    import time

    cache = _jit.cache_dir()
    if cache is not None and sum(1 for _ in cache.rglob("*.nbi")) < 2 * len(_jit.KERNELS):
        print(f"\nconftest: cold kernel cache, compiling every kernel in worker processes into {cache}", flush=True)
        start = time.perf_counter()
        times = fastgrad.warmup()
        print(
            f"conftest: suite warm-up {time.perf_counter() - start:.1f} s for {len(times)} kernel twins "
            f"({sum(times.values()):.1f} s of compiling in {fastgrad.config.default_jobs()} worker processes) "
            f"on {_jit.cpu_info()['model']}",
            flush=True,
        )
    else:
        print(f"\nconftest: kernel cache warm ({cache}), no suite warm-up", flush=True)
