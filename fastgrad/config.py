"""Threads, configuration report and kernel warm-up."""

from __future__ import annotations

import platform
import time

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


def warmup(dtypes=("float32", "float64"), verbose=False) -> dict:
    """Compile (or load from cache) every kernel, serial and parallel twin, for ``dtypes``.

    Returns {name: seconds}.  Later calls then run at full speed at once.
    """
    if isinstance(dtypes, (str, type, np.dtype)):
        dtypes = (dtypes,)
    dts = [float_dtype(d, "dtypes", "warmup") for d in dtypes]
    times = {}
    saved = _jit.PARALLEL_MIN_WORK
    try:
        for threshold in (0, saved):  # 0: tiny calls take the parallel twin too
            _jit.PARALLEL_MIN_WORK = threshold
            for name, func in WARMUPS:
                for dt in dts:
                    start = time.perf_counter()
                    func(dt)
                    key = f"{name} {dt.name}"
                    times[key] = times.get(key, 0.0) + time.perf_counter() - start
                    if verbose and threshold == saved:
                        print(f"  {key:<28}{times[key]:7.2f} s")
    finally:
        _jit.PARALLEL_MIN_WORK = saved
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
