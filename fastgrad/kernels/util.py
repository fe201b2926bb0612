"""Small reduction kernels used by validation and the optimizers."""

from numba import prange

from .._jit import F1, kernel


@kernel
def all_finite(x: F1):
    """True when every x_i is finite; x has shape (size,).

    sum_i x_i * 0 is 0 when every x_i is finite and NaN otherwise (Inf * 0 is
    NaN).  Without the nnan/ninf fast-math flags LLVM may not fold x * 0 to 0,
    so this is exact, allocation-free and vectorised.
    """
    acc = x.dtype.type(0)
    for i in prange(x.shape[0]):
        acc += x[i] * 0
    return acc == 0
