"""Max and average pooling, 1-D and 2-D (a 1-D problem is 2-D with H = kh = 1).

Window of output (oh, ow): input rows oh sh - ph + i (i < kh) and columns
ow sw - pw + j (j < kw).  Shapes: x, dx (N, C, H, W); y, dy, arg (N, C, Ho, Wo)
with Ho = (H + 2 ph - kh) // sh + 1 (floor, PyTorch's ceil_mode=False).

* max pooling: padding reads as -inf, so it never wins; the flat index
  ih * W + iw of the winner is saved in ``arg`` for the backward.  **Ties go to
  the first index** in row-major window order (strict ``>``), as PyTorch.  NaN
  wins over any number (the first NaN of the window), so NaN propagates.
* average pooling: padding counts in the divisor (PyTorch's default
  ``count_include_pad=True``): every output divides by kh * kw.

Race freedom: every kernel is parallel over the (sample, channel) planes; a
plane of dx is written only by its own iteration, in a fixed order.
"""

import math
from typing import NamedTuple

from numba import prange

from .._jit import F4, I4, kernel


class PoolDims(NamedTuple):
    """Window (kh, kw), stride (sh, sw) and symmetric padding (ph, pw)."""

    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int


@kernel
def max_pool_forward(y: F4, arg: I4, x: F4, dims: PoolDims):
    """y[n, c, oh, ow] = max_{i, j} x[n, c, oh sh - ph + i, ow sw - pw + j] (padding = -inf);
    arg[n, c, oh, ow] = ih * W + iw of the first maximum.

    Shapes: y (N, C, Ho, Wo), arg int64 (N, C, Ho, Wo), both overwritten; x (N, C, H, W).
    """
    N, C, H, W = x.shape
    Ho = y.shape[2]
    Wo = y.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t % C
        for oh in range(Ho):
            for ow in range(Wo):
                best = x.dtype.type(0)
                bi = -1
                for i in range(dims.kh):
                    ih = oh * dims.sh - dims.ph + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(dims.kw):
                        iw = ow * dims.sw - dims.pw + j
                        if iw < 0 or iw >= W:
                            continue
                        v = x[n, c, ih, iw]
                        # first element, strictly larger, or the first NaN (NaN propagates)
                        if bi < 0 or v > best or (math.isnan(v) and not math.isnan(best)):
                            best = v
                            bi = ih * W + iw
                y[n, c, oh, ow] = best
                arg[n, c, oh, ow] = bi


@kernel
def max_pool_backward(dx: F4, dy: F4, arg: I4):
    """dx[n, c, arg // W, arg % W] += dy[n, c, oh, ow]: the gradient goes to the saved maximum.

    Shapes: dx (N, C, H, W) accumulated; dy, arg (N, C, Ho, Wo).
    """
    N, C, _H, W = dx.shape
    Ho = dy.shape[2]
    Wo = dy.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t % C
        for oh in range(Ho):
            for ow in range(Wo):
                a = arg[n, c, oh, ow]
                dx[n, c, a // W, a % W] += dy[n, c, oh, ow]


@kernel
def avg_pool_forward(y: F4, x: F4, dims: PoolDims):
    """y[n, c, oh, ow] = (1 / (kh kw)) sum_{i, j} x[n, c, oh sh - ph + i, ow sw - pw + j]
    (padding reads as 0 and counts in the divisor).

    Shapes: y (N, C, Ho, Wo) overwritten; x (N, C, H, W).
    """
    N, C, H, W = x.shape
    Ho = y.shape[2]
    Wo = y.shape[3]
    scale = y.dtype.type(1.0 / (dims.kh * dims.kw))
    for t in prange(N * C):
        n = t // C
        c = t % C
        for oh in range(Ho):
            for ow in range(Wo):
                acc = y.dtype.type(0)
                for i in range(dims.kh):
                    ih = oh * dims.sh - dims.ph + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(dims.kw):
                        iw = ow * dims.sw - dims.pw + j
                        if iw >= 0 and iw < W:
                            acc += x[n, c, ih, iw]
                y[n, c, oh, ow] = acc * scale


@kernel
def avg_pool_backward(dx: F4, dy: F4, dims: PoolDims):
    """dx[n, c, oh sh - ph + i, ow sw - pw + j] += dy[n, c, oh, ow] / (kh kw) for every window tap inside x.

    Shapes: dx (N, C, H, W) accumulated; dy (N, C, Ho, Wo).
    """
    N, C, H, W = dx.shape
    Ho = dy.shape[2]
    Wo = dy.shape[3]
    scale = dx.dtype.type(1.0 / (dims.kh * dims.kw))
    for t in prange(N * C):
        n = t // C
        c = t % C
        for oh in range(Ho):
            for ow in range(Wo):
                g = dy[n, c, oh, ow] * scale
                for i in range(dims.kh):
                    ih = oh * dims.sh - dims.ph + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(dims.kw):
                        iw = ow * dims.sw - dims.pw + j
                        if iw >= 0 and iw < W:
                            dx[n, c, ih, iw] += g
