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
