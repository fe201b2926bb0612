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

from typing import NamedTuple

from numba import prange

from .._jit import F4, I4, kernel


class PoolGeometry(NamedTuple):
    """Every size of one pooling call, built once by the functional layer.

    Input (N, C, H, W); window (kh, kw); stride (sh, sw); symmetric padding
    (ph, pw); output (Ho, Wo) from ``fastgrad.functional.geometry.output_size``.
    """

    N: int
    C: int
    H: int
    W: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    Ho: int
    Wo: int


@kernel
def max_pool_forward(y: F4, arg: I4, x: F4, geo: PoolGeometry):
    """y[n, c, oh, ow] = max_{i, j} x[n, c, oh sh - ph + i, ow sw - pw + j] (padding = -inf);
    arg[n, c, oh, ow] = ih * W + iw of the first maximum.

    Shapes: y (N, C, Ho, Wo), arg int64 (N, C, Ho, Wo), both overwritten; x (N, C, H, W).
    """
    N, C, H, W = geo.N, geo.C, geo.H, geo.W
    Ho, Wo = geo.Ho, geo.Wo
    for t in prange(N * C):
        n = t // C
        c = t % C
        for oh in range(Ho):
            # the window's rows inside x (padding is never read), so the loops hold no branch
            top = oh * geo.sh - geo.ph
            i0 = max(0, -top)
            i1 = min(geo.kh, H - top)
            for ow in range(Wo):
                left = ow * geo.sw - geo.pw
                j0 = max(0, -left)
                j1 = min(geo.kw, W - left)
                if i0 >= i1 or j0 >= j1:
                    y[n, c, oh, ow] = 0
                    arg[n, c, oh, ow] = -1
                    continue
                best = x[n, c, top + i0, left + j0]
                bi = (top + i0) * W + left + j0
                nan = best != best
                # strictly larger wins (the first maximum wins ties), as a select, not a branch: on
                # random data such a branch is mispredicted half the time.  NaN is only noted here,
                # with a non-short-circuit |, and handled after the window.  Measured (Intel Xeon
                # AVX-512, float32 (32, 16, 8, 8), pool 2, serial): 135 us with the NaN test in the
                # loop's branches, 72 us with selects, 31 us with the 2 x 2 window written out
                # (loops of two trips whose bounds are known only at run time cost that much)
                two = geo.kh == 2 and geo.kw == 2 and i1 - i0 == 2 and j1 - j0 == 2
                if two:
                    # the common 2 x 2 window, written out
                    for q in range(1, 4):
                        ih = top + q // 2
                        iw = left + q % 2
                        v = x[n, c, ih, iw]
                        take = v > best
                        best = v if take else best
                        bi = ih * W + iw if take else bi
                        nan = nan | (v != v)
                for i in range(i0, i0 if two else i1):
                    for j in range(j0, j1):
                        v = x[n, c, top + i, left + j]
                        take = v > best
                        best = v if take else best
                        bi = (top + i) * W + left + j if take else bi
                        nan = nan | (v != v)
                if nan:
                    # rare: the first NaN is the window's value (NaN propagates, as in torch)
                    for i in range(i0, i1):
                        for j in range(j0, j1):
                            v = x[n, c, top + i, left + j]
                            if v != v:
                                best = v
                                bi = (top + i) * W + left + j
                                break
                        if best != best:
                            break
                y[n, c, oh, ow] = best
                arg[n, c, oh, ow] = bi


@kernel
def max_pool_backward(dx: F4, dy: F4, arg: I4, geo: PoolGeometry):
    """dx[n, c, arg // W, arg % W] += dy[n, c, oh, ow]: the gradient goes to the saved maximum.

    Shapes: dx (N, C, H, W) accumulated; dy, arg (N, C, Ho, Wo).
    """
    N, C, W = geo.N, geo.C, geo.W
    Ho, Wo = geo.Ho, geo.Wo
    for t in prange(N * C):
        n = t // C
        c = t % C
        for oh in range(Ho):
            for ow in range(Wo):
                a = arg[n, c, oh, ow]
                dx[n, c, a // W, a % W] += dy[n, c, oh, ow]


@kernel
def avg_pool_forward(y: F4, x: F4, geo: PoolGeometry):
    """y[n, c, oh, ow] = (1 / (kh kw)) sum_{i, j} x[n, c, oh sh - ph + i, ow sw - pw + j]
    (padding reads as 0 and counts in the divisor).

    Shapes: y (N, C, Ho, Wo) overwritten; x (N, C, H, W).
    """
    N, C, H, W = geo.N, geo.C, geo.H, geo.W
    Ho, Wo = geo.Ho, geo.Wo
    scale = y.dtype.type(1.0 / (geo.kh * geo.kw))
    for t in prange(N * C):
        n = t // C
        c = t % C
        for oh in range(Ho):
            for ow in range(Wo):
                acc = y.dtype.type(0)
                for i in range(geo.kh):
                    ih = oh * geo.sh - geo.ph + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(geo.kw):
                        iw = ow * geo.sw - geo.pw + j
                        if iw >= 0 and iw < W:
                            acc += x[n, c, ih, iw]
                y[n, c, oh, ow] = acc * scale


@kernel
def avg_pool_backward(dx: F4, dy: F4, geo: PoolGeometry):
    """dx[n, c, oh sh - ph + i, ow sw - pw + j] += dy[n, c, oh, ow] / (kh kw) for every window tap inside x.

    Shapes: dx (N, C, H, W) accumulated; dy (N, C, Ho, Wo).
    """
    N, C, H, W = geo.N, geo.C, geo.H, geo.W
    Ho, Wo = geo.Ho, geo.Wo
    scale = dx.dtype.type(1.0 / (geo.kh * geo.kw))
    for t in prange(N * C):
        n = t // C
        c = t % C
        for oh in range(Ho):
            for ow in range(Wo):
                g = dy[n, c, oh, ow] * scale
                for i in range(geo.kh):
                    ih = oh * geo.sh - geo.ph + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(geo.kw):
                        iw = ow * geo.sw - geo.pw + j
                        if iw >= 0 and iw < W:
                            dx[n, c, ih, iw] += g
