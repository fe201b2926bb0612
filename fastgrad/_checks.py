"""Input validation shared by ``functional`` and the layers (DESIGN section 4).

Every public entry point validates before any kernel runs.  Errors name the
function and parameter, say what was expected and what was received, and stay
short: ``Dense.forward: x.shape[1]=17 does not match in_features=16``.

Policy for dtypes: float32 and float64 arrays are accepted; Python lists of
numbers are converted with ``np.asarray`` and must come out as floats (lists of
ints are refused like int arrays, never truncated or silently converted); int,
bool, complex, float16, object and string arrays raise ``TypeError``.

Policy for non-finite values (``check_finite``): by default inputs containing
NaN or +-Inf raise ``ValueError``, because a NaN entering a training run is
almost always a bug upstream.  Pass ``check_finite=False`` to a functional call
or call :func:`set_check_finite(False) <set_check_finite>` to let NaN propagate
instead: fastgrad never cleans or replaces a NaN.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _jit
from .kernels.activations import CODES
from .kernels.util import all_finite

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_check_finite_default = True

#: Refuse to allocate more than this many bytes for one output (absurd sizes).
MAX_ALLOC_BYTES = 8 << 30


def set_check_finite(enabled: bool) -> None:
    """Globally enable/disable the NaN/Inf check on inputs (default: enabled)."""
    global _check_finite_default
    _check_finite_default = bool(enabled)


def get_check_finite() -> bool:
    return _check_finite_default


def _describe(x) -> str:
    if x is None:
        return "None"
    if isinstance(x, np.ndarray):
        return f"array of dtype {x.dtype}"
    return type(x).__name__


def float_dtype(dtype, name: str = "dtype", where: str = "") -> np.dtype:
    """Validate a dtype argument: float32 or float64 only."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{where}: {name} must be float32 or float64, got {dtype!r}")
    return dt


def as_array(
    x,
    name: str,
    where: str,
    *,
    ndim=None,
    dtype=None,
    check_finite=None,
) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32/float64 array, or raise.

    ``ndim`` is an int or a tuple of allowed ints.  ``dtype`` converts float
    input to that dtype (float64 -> float32 is documented, lossy by design);
    without it the array keeps its own float dtype.  The input is never
    modified: a copy is made whenever a conversion is needed.
    """
    if x is None:
        raise TypeError(f"{where}: {name} must be a float32/float64 array, got None")
    if isinstance(x, np.ndarray):
        arr = x
    else:
        if isinstance(x, (str, bytes, dict, set)):
            raise TypeError(f"{where}: {name} must be a float32/float64 array, got {type(x).__name__}")
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{where}: {name} could not be read as an array ({exc})"[:290]) from None
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{where}: {name} must be a float32/float64 array, got {_describe(arr)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{where}: {name} must be {want}-D, got shape {arr.shape}")
    if dtype is not None:
        arr = np.ascontiguousarray(arr, dtype=dtype)
    else:
        arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:
        # numba types read-only arrays separately: copy once so every kernel keeps
        # one compiled specialisation per dtype (kernels never write their inputs)
        arr = arr.copy()
    if check_finite is None:
        check_finite = _check_finite_default
    if check_finite:
        check_finite_values(arr, name, where)
    return arr


def is_plain(a, shape: tuple, dtype) -> bool:
    """``a`` is an ndarray of exactly this shape and dtype that kernels take as it is (C-contiguous,
    writable): what a layer's remembered fast path accepts without validating again."""
    return type(a) is np.ndarray and a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable


def check_finite_values(arr: np.ndarray, name: str, where: str) -> None:
    """Raise ValueError if the C-contiguous float array ``arr`` holds a NaN or Inf (one compiled scan)."""
    if arr.size and not _jit.pick(all_finite, arr.size)(arr.reshape(-1)):
        raise ValueError(
            f"{where}: {name} contains NaN or Inf (pass check_finite=False or call "
            "fastgrad.set_check_finite(False) to let it propagate)"
        )


def as_indices(x, name: str, where: str, *, high: int | None = None) -> np.ndarray:
    """Return integer indices ``x`` as a C-contiguous int64 array, each in [0, high), or raise.

    Any integer dtype (and Python lists of ints) is accepted; floats are refused
    rather than truncated, and bools rather than read as 0/1 (TypeError).  A
    value outside [0, high) raises ValueError naming the range and the extremes.
    The input is never modified.
    """
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"{where}: {name} must be an array of integer indices, got {_describe(x)}")
    try:
        arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{where}: {name} could not be read as an array ({exc})"[:290]) from None
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{where}: {name} must be an array of integer indices, got {_describe(arr)}")
    if arr.size and high is not None:
        lo, hi = arr.min(), arr.max()  # before any conversion: a huge uint64 must not wrap into range
        if lo < 0 or hi >= high:
            raise ValueError(f"{where}: {name} must hold indices in [0, {high}), got values from {lo} to {hi}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    return out if out.flags.writeable else out.copy()


def check_shape(arr: np.ndarray, shape: tuple, name: str, where: str) -> None:
    """Raise ValueError unless arr.shape == shape (None in shape matches anything)."""
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{where}: {name} must have shape {want}, got {arr.shape}")


def positive_int(value, name: str, where: str, *, minimum: int = 1) -> int:
    """An int >= minimum (bools and floats refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int >= {minimum}, got {_describe(value)} {value!r}"[:290])
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return int(value)


def real_number(value, name: str, where: str, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """A finite real number within the given bounds (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a real number, got {_describe(value)} {value!r}"[:290])
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{where}: {name} must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        rel = ">" if low_open else ">="
        raise ValueError(f"{where}: {name} must be {rel} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        rel = "<" if high_open else "<="
        raise ValueError(f"{where}: {name} must be {rel} {high}, got {v}")
    return v


def format_bytes(nbytes: int) -> str:
    """1536 -> '1.5 KiB'; exact byte count for small values."""
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            return f"{nbytes} bytes" if unit == "bytes" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{nbytes} bytes"  # pragma: no cover


def check_alloc(where: str, dtype, arrays, what: str = "", copies: int = 1) -> None:
    """Refuse absurd allocations before they are attempted, naming arrays, shapes, dtype and bytes.

    ``arrays``: (name, shape) pairs that would be allocated together, with the
    shapes the user sees (``y (N, M, Ho, Wo)``, never an internal layout).
    Sizes are Python ints, so nothing overflows however large the request.
    ``copies`` counts each array that many times and ``what`` says why
    (parameters: 2, "with their gradients").
    """
    itemsize = np.dtype(dtype).itemsize
    nbytes = 0
    for _name, shape in arrays:
        n = itemsize
        for s in shape:
            n *= int(s)
        nbytes += n * copies
    if nbytes > MAX_ALLOC_BYTES:
        listed = " and ".join(f"{name} {tuple(int(s) for s in shape)}" for name, shape in arrays)
        suffix = f" {what}" if what else ""
        raise ValueError(
            f"{where}: {listed} {np.dtype(dtype).name}{suffix} would need {format_bytes(nbytes)} "
            f"({nbytes:,} bytes), more than the {format_bytes(MAX_ALLOC_BYTES)} limit"
        )


def activation_code(name, where: str, param: str = "activation") -> int:
    """Map an activation name to its kernel code, or raise listing the valid names."""
    code = CODES.get(name) if isinstance(name, str) else None
    if code is not None:
        return code
    if not isinstance(name, str):
        raise TypeError(f"{where}: {param} must be a string, got {_describe(name)}")
    raise ValueError(f"{where}: unknown {param} {name!r}; expected one of {', '.join(CODES)}"[:299])
