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

import ctypes
import hashlib
import os
import sys
import tempfile
import threading
import types
import warnings
from pathlib import Path

import numba
import numpy as np
from numba.core.caching import FunctionCache

__all__ = [
    "FASTMATH",
    "PARALLEL_MIN_WORK",
    "Kernel",
    "kernel",
    "helper",
    "pick",
    "pick_state",
    "exact",
    "cache_dir",
    "cache_enabled",
    "cpu_info",
    "F1",
    "F2",
    "F3",
    "F4",
    "I1",
    "I2",
    "I4",
    "Real",
]

#: LLVM fast-math flags allowed in kernels (never nnan / ninf).
FASTMATH = frozenset({"contract", "reassoc", "nsz", "arcp", "afn"})

#: Below this many multiply-adds a call runs on the serial twin.  Measured on the
#: 2-core test machine: starting the numba thread pool for one call costs about
#: 5-15 us, which is the time of roughly 2**15 fused multiply-adds.
PARALLEL_MIN_WORK = 1 << 15

#: The same for kernels on the product core, which pack in one parallel launch and
#: multiply in a second: measured (AMD Zen 3, float32) dense forward (32, 128, 128),
#: 2**19 multiply-adds, serial 34 us, parallel 50 us; (128, 512, 512) serial 1.43 ms,
#: parallel 1.01 ms.
CORE_SERIAL_BELOW = 1 << 21

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


# --------------------------------------------------------------------------
# threading layer: TBB from the pip wheel
# --------------------------------------------------------------------------

TBB_LIBRARY = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib"}


def _load_tbb_wheel() -> str | None:
    """Load the ``tbb`` wheel's libtbb when TBB is the requested layer; returns its path or None.

    numba's ``tbbpool`` extension links against ``libtbb.so.12`` by name only
    (no RPATH), and pip puts the wheel's copy in ``<prefix>/lib``, outside the
    loader's search path.  Once the library is loaded (RTLD_GLOBAL), the loader
    resolves tbbpool's dependency to it.  A libtbb the loader finds by itself
    (system or conda) is left alone.
    """
    if str(numba.config.THREADING_LAYER).lower() not in ("tbb", "safe"):
        return None
    name = TBB_LIBRARY.get(sys.platform)
    if name is None:
        return None
    try:
        ctypes.CDLL(name)
        return None  # found on the loader's own path
    except OSError:
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        lib = Path(prefix) / "lib" / name
        if lib.exists():
            try:
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            return str(lib)
    return None


TBB_PRELOADED = _load_tbb_wheel()


# --------------------------------------------------------------------------
# the CPU numba compiles for
# --------------------------------------------------------------------------


def _cache_sizes() -> dict:
    """Per-core data cache sizes in bytes {"L1d": .., "L2": .., "L3": ..} from sysfs (Linux), else {}."""
    sizes = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = (index / "level").read_text().strip()
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if not digits.isdigit():
            continue
        sizes["L1d" if level == "1" else f"L{level}"] = int(digits) * scale
    return sizes


def _llvm_target() -> tuple[str, set]:
    """(cpu name, set of enabled feature names) as numba's code generator sees them."""
    import llvmlite.binding as llvm

    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    if numba.config.CPU_FEATURES is not None:
        spec = numba.config.CPU_FEATURES
    else:
        spec = llvm.get_host_cpu_features().flatten()
    features = {f[1:] for f in spec.split(",") if f.startswith("+")}
    return name, features


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_info() -> dict:
    """The CPU kernels are compiled for: model, LLVM name, ISA, vector width and cache sizes.

    ``vector_bits`` is 512 with AVX-512F, 256 with AVX, else 128 (SSE2/NEON);
    ``lanes`` maps each dtype name to the values one vector register holds.
    Caches default to 32 KiB / 512 KiB / 8 MiB where the OS does not tell.
    """
    global _CPU_INFO
    if _CPU_INFO is None:
        name, features = _llvm_target()
        if "avx512f" in features:
            isa, bits = "avx512f", 512
        elif "avx2" in features:
            isa, bits = "avx2", 256
        elif "avx" in features:
            isa, bits = "avx", 256
        else:
            isa, bits = "sse2" if "sse2" in features else "baseline", 128
        caches = {"L1d": 32 << 10, "L2": 512 << 10, "L3": 8 << 20}
        caches.update(_cache_sizes())
        _CPU_INFO = {
            "model": _cpu_model(),
            "llvm_cpu": name,
            "isa": isa,
            "fma": "fma" in features,
            "vector_bits": bits,
            "lanes": {"float32": bits // 32, "float64": bits // 64},
            "caches": caches,
        }
    return _CPU_INFO


_CPU_INFO = None


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
        dispatcher = numba.njit(**options)(py_func)
        if hasattr(dispatcher, "_cache"):  # not under NUMBA_DISABLE_JIT=1
            dispatcher._cache = _GuardedCache(py_func)
        return dispatcher
    finally:
        numba.config.CACHE_DIR = saved


class _GuardedCache(FunctionCache):
    """numba's on-disk cache of one function, whose writes may fail without failing the call.

    numba lets an OSError from writing a cache file (a full disk, a folder made
    read-only or removed while the process runs) propagate out of the kernel
    call that compiled.  Here the first such error issues one warning and turns
    writing off for every kernel; compiled code then lives in memory only, and
    loading what is already cached goes on.
    """

    def save_overload(self, sig, data):
        if _WRITES_FAILED:
            return
        try:
            super().save_overload(sig, data)
        except OSError as exc:
            _writes_failed(exc)


_WRITES_FAILED = False


def _writes_failed(exc: OSError) -> None:
    global _WRITES_FAILED
    if _WRITES_FAILED:
        return
    _WRITES_FAILED = True
    warnings.warn(
        f"fastgrad: could not write to the kernel cache {_CACHE_DIR} ({exc.strerror or exc}); kernels "
        "compiled from now on are kept in memory only (free space or set FASTGRAD_CACHE_DIR to a "
        "writable directory to keep them between runs)",
        RuntimeWarning,
        stacklevel=2,
    )


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


# --------------------------------------------------------------------------
# parameter annotations: the exact signature of every kernel, for warm-up
# --------------------------------------------------------------------------


class ArrayKind:
    """Annotation of a kernel parameter: a C-contiguous ``ndim``-D array of the
    kernel's float dtype (``F1`` ... ``F4``) or of int64 (``I1``, ``I4``)."""

    __slots__ = ("ndim", "integer")

    def __init__(self, ndim: int, integer: bool = False):
        self.ndim = ndim
        self.integer = integer

    def example(self, dtype):
        return np.empty((0,) * self.ndim, np.int64 if self.integer else dtype)

    def __repr__(self):
        return f"{'I' if self.integer else 'F'}{self.ndim}"


class ScalarKind:
    """Annotation of a scalar parameter of the kernel's float dtype (``Real``)."""

    def example(self, dtype):
        return np.dtype(dtype).type(0)

    def __repr__(self):
        return "Real"


F1, F2, F3, F4 = (ArrayKind(d) for d in (1, 2, 3, 4))
I1 = ArrayKind(1, integer=True)
I2 = ArrayKind(2, integer=True)
I4 = ArrayKind(4, integer=True)
Real = ScalarKind()


def example_value(annotation, dtype):
    """A value whose numba type is the one a call passes for ``annotation`` and ``dtype``.

    ``int`` and ``bool`` are Python scalars (int64, boolean); a NamedTuple class
    is built field by field from its own annotations.
    """
    if isinstance(annotation, (ArrayKind, ScalarKind)):
        return annotation.example(dtype)
    if annotation is int:
        return 0
    if annotation is bool:
        return False
    if isinstance(annotation, type) and issubclass(annotation, tuple) and hasattr(annotation, "_fields"):
        hints = annotation.__annotations__
        return annotation(*(example_value(hints[f], dtype) for f in annotation._fields))
    raise TypeError(f"not a kernel parameter annotation: {annotation!r}")


def _annotations(py_func) -> list:
    """The annotation of every parameter, in order; raises if one is missing."""
    import inspect

    out = []
    for name, param in inspect.signature(py_func).parameters.items():
        if param.annotation is inspect.Parameter.empty:
            raise TypeError(f"kernel {py_func.__qualname__}: parameter {name!r} needs an annotation (F1..F4, I1, I4, Real, int, ...)")
        out.append(param.annotation)
    return out


class Kernel:
    """A kernel compiled twice from one Python function.

    ``parallel`` uses ``prange`` as a parallel loop; ``serial`` is the same code
    with ``prange`` run as ``range``.  ``py_func`` is the plain Python function
    (what ``NUMBA_DISABLE_JIT=1`` runs).  Calling the Kernel calls the parallel
    twin through :func:`pick` semantics with unknown work (always parallel).
    """

    def __init__(self, py_func, fastmath: bool, dynamic: bool = False, serial_below: int | None = None):
        flags = set(FASTMATH) if fastmath else False
        self.py_func = py_func
        self.dynamic = dynamic
        #: work (multiply-adds) below which pick() runs the serial twin; None: PARALLEL_MIN_WORK
        self.serial_below = serial_below
        self.__name__ = py_func.__name__
        self.__doc__ = py_func.__doc__
        self.__wrapped__ = py_func
        self.annotations = _annotations(py_func)
        self.parallel = _njit(py_func, parallel=_PARALLEL_OPTIONS, fastmath=flags)
        self.serial = _njit(_renamed_copy(py_func, "__serial"), parallel=False, fastmath=flags)

    @property
    def name(self) -> str:
        """``module.function`` with the module relative to fastgrad.kernels (``dense.dense_forward``)."""
        return f"{self.py_func.__module__.rsplit('.', 1)[-1]}.{self.__name__}"

    def signature(self, dtype) -> tuple:
        """The numba argument types of a call with float arrays of ``dtype``."""
        return tuple(numba.typeof(example_value(a, np.dtype(dtype))) for a in self.annotations)

    def compile(self, dtype, twin: str) -> None:
        """Compile (or load from the cache) one twin, "serial" or "parallel", for ``dtype``."""
        dispatcher = self.serial if twin == "serial" else self.parallel
        if hasattr(dispatcher, "compile"):  # not under NUMBA_DISABLE_JIT=1
            dispatcher.compile(self.signature(dtype))

    def __call__(self, *args):
        # unknown work counts as the least that runs parallel: PARALLEL_MIN_WORK alone was below
        # serial_below (products.matmul: 2^21), so P.matmul(...) ran serial (81 against 134 GFLOP/s
        # at 512^3 float32, 2 threads, AMD EPYC Zen 3)
        return pick(self, max(PARALLEL_MIN_WORK, self.serial_below or 0))(*args)

    def __repr__(self):
        return f"<fastgrad kernel {self.__name__}>"


#: every kernel declared with @kernel, for warm-up and the specialisation audit
KERNELS: list[Kernel] = []


def kernel(py_func=None, *, fastmath: bool = True, dynamic: bool = False, serial_below: int | None = None):
    """Declare a kernel: returns a :class:`Kernel` with parallel and serial twins.

    ``serial_below``: work under which the serial twin runs, for kernels whose
    parallel twin has more than one launch to pay for (default PARALLEL_MIN_WORK).

    ``dynamic=True``: the parallel twin's ``prange`` iterations are handed to
    the threads one at a time as they finish (numba's parallel chunk size 1)
    instead of in equal contiguous blocks, for loops whose iterations differ in
    cost.  Which thread runs an iteration never changes a result: every output
    element is owned by one iteration.  (Set around the call because numba
    cannot cache a kernel that sets the chunk size itself.)
    """

    def wrap(func):
        k = Kernel(func, fastmath, dynamic, serial_below)
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
    # PARALLEL_MIN_WORK = 0 forces every parallel twin (the tests and warm-up do that)
    limit = PARALLEL_MIN_WORK if k.serial_below is None or PARALLEL_MIN_WORK == 0 else k.serial_below
    if work < limit or _serial_only or numba.get_num_threads() == 1:
        return k.serial
    # setting numba's chunk size costs ~5 us a call: only worth it for large work
    fn = _Dynamic(k.parallel) if k.dynamic and work >= 64 * PARALLEL_MIN_WORK else k.parallel
    if _workqueue_active():
        return _Locked(fn)
    return fn


def pick_state() -> tuple:
    """What :func:`pick` reads besides the work: (numba's thread count, serial-only after a fork,
    the serial threshold, which the tests and warm-up set to 0 to force every parallel twin).

    A call that remembers its picked twin keys the memory on this, so a change
    of ``numba.set_num_threads`` between calls picks again.
    """
    return numba.get_num_threads(), _serial_only, PARALLEL_MIN_WORK


def exact(fn, args):
    """``fn`` for calls whose arguments have exactly the numba types of ``args``, without per-call typing.

    A numba dispatcher types every argument on every call before it finds the
    compiled overload: measured (Intel Xeon, AVX-512) 1.2 us of a 1.9 us call of
    the dense forward kernel at (1, 1, 1), whose NamedTuple arguments take
    numba's slow typing path.  The overload's entry point does the same work
    without the typing.  The caller guarantees the types (it keys its memory
    on shapes and dtypes); wrappers (:func:`pick`'s locked or dynamic twins)
    and plain functions (NUMBA_DISABLE_JIT=1) are returned as they are.
    """
    overloads = getattr(fn, "overloads", None)
    if overloads is None or not hasattr(fn, "typeof_pyval"):
        return fn
    sig = tuple(fn.typeof_pyval(a) for a in args)
    if sig not in overloads:
        fn.compile(sig)
    return overloads[sig].entry_point
