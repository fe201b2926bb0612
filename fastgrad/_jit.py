"""The one place that sets numba options for fastgrad.

Every kernel in ``fastgrad/kernels`` is declared with :func:`kernel` (or
:func:`helper` for the small ``@njit`` functions kernels call).  This module
owns the choices that are easy to get subtly wrong when they are spread out:

* **fastmath flags.**  ``FASTMATH`` = {contract, reassoc, nsz, arcp, afn}.
  Never ``nnan``/``ninf``: with them LLVM may assume no NaN exists, and
  ``np.isnan`` (and every NaN that should propagate) silently lies.  Kernels
  whose accuracy depends on operation order (softmax, log-sum-exp, losses) are
  declared with ``fastmath=False``.
* **error model** ``"numpy"``: division by zero gives inf/nan like NumPy
  instead of raising from inside a kernel (kernels never raise).
* **parallel and serial twins.**  ``kernel`` compiles the same Python function
  twice: once with ``parallel=True`` (``prange`` becomes a parallel loop) and
  once serial (``prange`` is a plain ``range``).  Small calls use the serial twin
  so they pay no thread start-up; see :func:`pick`.
* **cache policy.**  Compiled code is cached on disk in a directory named after
  the numba version and a hash of every kernel source file, so editing any kernel
  or helper can never leave stale machine code behind (numba's own cache only
  looks at the timestamp of the file that holds the decorated function).  The
  directory is ``$FASTGRAD_CACHE_DIR``, else ``$NUMBA_CACHE_DIR/fastgrad``,
  else ``~/.cache/fastgrad``.  If it cannot be written, one warning is issued and
  caching is switched off (compiling still works, it is just not kept).
* **thread safety.**  numba's ``workqueue`` threading layer aborts the whole
  process when two Python threads run parallel kernels at once.  Every parallel
  call goes through :func:`pick`, which serialises parallel launches behind a
  lock when that layer is active.
* **fork safety.**  GNU OpenMP (numba's ``omp`` layer) kills a forked child
  that launches a parallel region after its parent did.  In such a child
  :func:`pick` runs the serial twins instead (same results, bitwise), with one
  warning; use the ``spawn`` start method to get parallel kernels in children.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import types
import warnings
from pathlib import Path

import numba
import numpy as np

__all__ = [
    "FASTMATH",
    "PARALLEL_MIN_WORK",
    "Kernel",
    "kernel",
    "helper",
    "pick",
    "cache_dir",
    "cache_enabled",
]

#: LLVM fast-math flags allowed in kernels (never nnan / ninf).
FASTMATH = frozenset({"contract", "reassoc", "nsz", "arcp", "afn"})

#: Below this many multiply-adds a call runs on the serial twin.  Measured on the
#: 2-core test machine: starting the numba thread pool for one call costs about
#: 5-15 us, which is the time of roughly 2**15 fused multiply-adds.
PARALLEL_MIN_WORK = 1 << 15

_KERNEL_DIR = Path(__file__).resolve().parent / "kernels"

#: numba's parallel passes, reduced to what the kernels use: explicit ``prange``
#: loops (and the reduction in util.all_finite).  The passes that turn NumPy
#: calls, comprehensions and slice assignments into parallel loops, and loop
#: fusion, have nothing to work on in index-form kernels but still analyse every
#: statement.  Cold compile, every kernel, float32, one process: 69 -> 66 s.
_PARALLEL_OPTIONS = {
    "prange": True,
    "reduction": True,
    "fusion": False,
    "comprehension": False,
    "setitem": False,
    "inplace_binop": False,
    "numpy": False,
    "stencil": False,
}


def _source_hash() -> str:
    """Hash of every kernel source file and of this module (the cache version)."""
    digest = hashlib.sha256(numba.__version__.encode())
    digest.update(np.__version__.encode())
    for path in sorted(_KERNEL_DIR.glob("*.py")) + [Path(__file__).resolve()]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _preferred_cache_root() -> Path:
    if os.environ.get("FASTGRAD_CACHE_DIR"):
        return Path(os.environ["FASTGRAD_CACHE_DIR"])
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "fastgrad"
    return Path.home() / ".cache" / "fastgrad"


def _usable_cache_dir() -> Path | None:
    """Return a writable, versioned cache directory, or None (with one warning)."""
    if os.environ.get("FASTGRAD_DISABLE_CACHE", "") not in ("", "0"):
        return None
    try:
        root = _preferred_cache_root()
    except (RuntimeError, KeyError):  # no home directory at all
        root = None
    if root is not None:
        path = root / _source_hash()
        try:
            path.mkdir(parents=True, exist_ok=True)
            # Creating a file is the only reliable writability test (ACLs,
            # read-only mounts and root-squash all defeat os.access).
            with tempfile.NamedTemporaryFile(dir=path, prefix=".probe"):
                pass
            return path
        except OSError as exc:
            reason = f"{path}: {exc.strerror or exc}"
    else:
        reason = "no home directory"
    warnings.warn(
        f"fastgrad: kernel cache directory not writable ({reason}); compiled "
        "kernels will not be cached (set FASTGRAD_CACHE_DIR to a writable "
        "directory to keep them between runs)",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


_CACHE_DIR = _usable_cache_dir()


def cache_dir() -> Path | None:
    """The directory compiled kernels are cached in, or None if caching is off."""
    return _CACHE_DIR


def cache_enabled() -> bool:
    return _CACHE_DIR is not None


def _njit(py_func, *, parallel: bool, fastmath):
    """numba.njit with fastgrad's options, cached in fastgrad's own directory.

    numba reads ``config.CACHE_DIR`` when the dispatcher is created, so it is
    set for the duration of the decoration only and the user's own numba
    setting is left as it was for everything else in the process.
    """
    options = dict(
        parallel=parallel,
        fastmath=fastmath,
        error_model="numpy",
        nogil=True,
        cache=_CACHE_DIR is not None,
    )
    if _CACHE_DIR is None:
        return numba.njit(**options)(py_func)
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(_CACHE_DIR)
    try:
        return numba.njit(**options)(py_func)
    finally:
        numba.config.CACHE_DIR = saved


#: The one fast-math flag the exact kernels' sums use (see :func:`helper`).
REASSOC = frozenset({"reassoc"})


def helper(py_func=None, *, fastmath: bool = True, reassoc: bool = False):
    """Decorator for small ``@njit`` functions called from kernels (inlined by LLVM).

    ``fastmath=False, reassoc=True`` is for the sums of the exact kernels
    (softmax, losses): LLVM may then split a sum into as many partial sums as
    the vector registers hold, and nothing else (no approximate functions, no
    assumptions about NaN/Inf).  The split is fixed by the compiled code, so the
    result does not depend on the thread count.
    """

    def wrap(func):
        flags = set(FASTMATH) if fastmath else (set(REASSOC) if reassoc else False)
        return _njit(func, parallel=False, fastmath=flags)

    return wrap if py_func is None else wrap(py_func)


def _renamed_copy(py_func, suffix: str):
    """A copy of ``py_func`` with its own qualname.

    numba's cache files are named after the function's qualname and its index
    key does not include the compile flags, so the serial twin needs its own
    name or it would overwrite the parallel twin's cache entry.
    """
    twin = types.FunctionType(
        py_func.__code__,
        py_func.__globals__,
        py_func.__name__ + suffix,
        py_func.__defaults__,
        py_func.__closure__,
    )
    twin.__qualname__ = py_func.__qualname__ + suffix
    twin.__doc__ = py_func.__doc__
    twin.__module__ = py_func.__module__
    return twin


class Kernel:
    """A kernel compiled twice from one Python function.

    ``parallel`` uses ``prange`` as a parallel loop; ``serial`` is the same code
    with ``prange`` run as ``range``.  ``py_func`` is the plain Python function
    (what ``NUMBA_DISABLE_JIT=1`` runs).  Calling the Kernel calls the parallel
    twin through :func:`pick` semantics with unknown work (always parallel).
    """

    def __init__(self, py_func, fastmath: bool, dynamic: bool = False):
        flags = set(FASTMATH) if fastmath else False
        self.py_func = py_func
        self.dynamic = dynamic
        self.__name__ = py_func.__name__
        self.__doc__ = py_func.__doc__
        self.__wrapped__ = py_func
        self.parallel = _njit(py_func, parallel=_PARALLEL_OPTIONS, fastmath=flags)
        self.serial = _njit(_renamed_copy(py_func, "__serial"), parallel=False, fastmath=flags)

    def __call__(self, *args):
        return pick(self, PARALLEL_MIN_WORK)(*args)

    def __repr__(self):
        return f"<fastgrad kernel {self.__name__}>"


#: every kernel declared with @kernel, for warm-up and the specialisation audit
KERNELS: list[Kernel] = []


def kernel(py_func=None, *, fastmath: bool = True, dynamic: bool = False):
    """Declare a kernel: returns a :class:`Kernel` with parallel and serial twins.

    ``dynamic=True``: the parallel twin's ``prange`` iterations are handed to
    the threads one at a time as they finish (numba's parallel chunk size 1)
    instead of in equal contiguous blocks, for loops whose iterations differ in
    cost.  Which thread runs an iteration never changes a result: every output
    element is owned by one iteration.  (Set around the call because numba
    cannot cache a kernel that sets the chunk size itself.)
    """

    def wrap(func):
        k = Kernel(func, fastmath, dynamic)
        KERNELS.append(k)
        return k

    return wrap if py_func is None else wrap(py_func)


# --------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------

_LAUNCH_LOCK = threading.RLock()
_layer_is_workqueue: bool | None = None


def _workqueue_active() -> bool:
    """True when numba runs parallel loops on its ``workqueue`` layer.

    The layer is only chosen at the first parallel launch; until then we assume
    the worst (and lock), which costs nothing measurable.
    """
    global _layer_is_workqueue
    if _layer_is_workqueue is None:
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            return True
        _layer_is_workqueue = layer == "workqueue"
    return _layer_is_workqueue


class _Dynamic:
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        saved = numba.set_parallel_chunksize(1)
        try:
            return self.fn(*args)
        finally:
            numba.set_parallel_chunksize(saved)


class _Locked:
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        with _LAUNCH_LOCK:
            return self.fn(*args)


_serial_only = False


def _after_fork_in_child() -> None:
    global _serial_only, _LAUNCH_LOCK
    _LAUNCH_LOCK = threading.RLock()  # a lock held by another parent thread is never released here
    try:
        layer = numba.threading_layer()
    except ValueError:  # the parent never ran a parallel kernel: nothing to protect
        return
    if layer == "omp":
        _serial_only = True
        warnings.warn(
            "fastgrad: this process was forked after its parent ran parallel kernels on GNU OpenMP, "
            "which is not fork-safe; kernels run serially here (use multiprocessing's 'spawn' start "
            "method or NUMBA_THREADING_LAYER=workqueue for parallel kernels in child processes)",
            RuntimeWarning,
            stacklevel=2,
        )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def pick(k: Kernel, work: int):
    """The twin of ``k`` to run for ``work`` multiply-adds.

    Serial when the work is small, numba has one thread, or this is a forked
    child of an OpenMP parent; the parallel twin otherwise, behind a lock when
    the workqueue layer is active (it is not re-entrant across Python threads).
    """
    if work < PARALLEL_MIN_WORK or _serial_only or numba.get_num_threads() == 1:
        return k.serial
    # setting numba's chunk size costs ~5 us a call: only worth it for large work
    fn = _Dynamic(k.parallel) if k.dynamic and work >= 64 * PARALLEL_MIN_WORK else k.parallel
    if _workqueue_active():
        return _Locked(fn)
    return fn
