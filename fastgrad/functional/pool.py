"""Max and average pooling, functional, 1-D and 2-D (kernels.pool).

x (N, C, L) or (N, C, H, W); ``kernel_size``, ``stride`` (None means
kernel_size) and ``padding`` (<= kernel_size // 2, symmetric): an int or one
int per spatial dim, parsed once into a PoolGeometry.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import as_array, check_alloc
from .._workspace import recycled, recycled_zeros
from ..kernels import pool as kpool
from ..kernels.pool import PoolGeometry
from .common import Launch, call_key, grad_buffer, remembered, unpack_grads, upstream
from .geometry import pool_geometry


class PoolCache(NamedTuple):
    """What the pooling backward needs: the input shape and dtype, the geometry, argmax (max only)."""

    x_shape: tuple  # the user's (N, C, L) or (N, C, H, W)
    dtype: np.dtype
    geo: PoolGeometry
    arg: np.ndarray | None  # int64 (N, C, Ho, Wo) flat index ih * W + iw, max pooling only
    kind: str  # "max" or "avg"

    @property
    def out_shape(self) -> tuple:
        """The user's shape of y and dy: (N, C, *out_spatial)."""
        tail = (self.geo.Wo,) if len(self.x_shape) == 3 else (self.geo.Ho, self.geo.Wo)
        return tuple(self.x_shape[:2]) + tail


def max_pool_forward(x, kernel_size, stride=None, padding=0, *, check_finite=None):
    """y = max over each window (padding = -inf; ties go to the first index); returns ``(y, cache)``.

    The cache keeps the int64 flat index of each window's maximum.
    """
    return _forward("max", x, kernel_size, stride, padding, check_finite, "max_pool_forward")


def avg_pool_forward(x, kernel_size, stride=None, padding=0, *, check_finite=None):
    """y = mean over each window, padding counted in the divisor (count_include_pad=True); returns ``(y, cache)``."""
    return _forward("avg", x, kernel_size, stride, padding, check_finite, "avg_pool_forward")


def max_pool_backward(dy, cache: PoolCache, *, check_finite=None):
    """dx: each dy goes to its window's saved maximum (accumulated where windows overlap)."""
    return _backward_new(dy, cache, "max", "max_pool_backward", check_finite)


def avg_pool_backward(dy, cache: PoolCache, *, check_finite=None):
    """dx: each dy / (kh kw) goes to every in-bounds position of its window."""
    return _backward_new(dy, cache, "avg", "avg_pool_backward", check_finite)


def max_pool_backward_into(grads, dy, cache: PoolCache, *, check_finite=None) -> None:
    """Accumulate (``+=``) max pooling's dL/dx into ``grads`` = (dx,) of x's shape and dtype."""
    _backward_into(grads, dy, cache, "max", "max_pool_backward_into", check_finite)


def avg_pool_backward_into(grads, dy, cache: PoolCache, *, check_finite=None) -> None:
    """Accumulate (``+=``) average pooling's dL/dx into ``grads`` = (dx,) of x's shape and dtype."""
    _backward_into(grads, dy, cache, "avg", "avg_pool_backward_into", check_finite)


def _forward(kind, x, kernel_size, stride, padding, check_finite, where):
    x = as_array(x, "x", where, ndim=(3, 4), check_finite=check_finite)
    if x.shape[0] == 0 or min(x.shape[1:]) == 0:
        raise ValueError(f"{where}: x must have no zero-length axis, got shape {x.shape}")
    geo = pool_geometry(x.shape, kernel_size, stride, padding, where)
    full_out = x.shape[:2] + ((geo.Wo,) if x.ndim == 3 else (geo.Ho, geo.Wo))
    check_alloc(where, x.dtype, [("y", full_out)])
    return forward_checked(kind, x, geo)


def forward_checked(kind: str, x, geo: PoolGeometry):
    """The pooling forward after validation (the pooling layers call it once they know their input)."""
    x4 = x.reshape(geo.N, geo.C, geo.H, geo.W)
    y = recycled((geo.N, geo.C, geo.Ho, geo.Wo), x.dtype)
    launch = _launches(call_key(geo, kind, x.dtype))
    if kind == "max":
        arg = recycled(y.shape, np.int64)
        launch.forward(y, arg, x4, geo)
    else:
        arg = None
        launch.forward(y, x4, geo)
    full_out = x.shape[:2] + ((geo.Wo,) if x.ndim == 3 else (geo.Ho, geo.Wo))
    return y.reshape(full_out), PoolCache(x.shape, x.dtype, geo, arg, kind)


class _Launches:
    """The forward and backward launches of one geometry and kind, made once."""

    def __init__(self, geo: PoolGeometry, kind: str):
        out = geo.N * geo.C * geo.Ho * geo.Wo
        if kind == "max":
            self.forward = Launch(kpool.max_pool_forward, out * geo.kh * geo.kw)
            self.backward = Launch(kpool.max_pool_backward, out)
        else:
            self.forward = Launch(kpool.avg_pool_forward, out * geo.kh * geo.kw)
            self.backward = Launch(kpool.avg_pool_backward, out * geo.kh * geo.kw)


@remembered
def _launches(key) -> _Launches:
    return _Launches(key[0], key[1])


def _check_cache(cache, kind, where):
    if not isinstance(cache, PoolCache) or cache.kind != kind:
        raise TypeError(f"{where}: cache must be the PoolCache returned by {kind}_pool_forward, got {type(cache).__name__}")


def _backward_new(dy, cache, kind, where, check_finite):
    _check_cache(cache, kind, where)
    dx = recycled_zeros(cache.x_shape, cache.dtype)
    _backward(dx, dy, cache, where, check_finite)
    return dx


def _backward_into(grads, dy, cache, kind, where, check_finite):
    _check_cache(cache, kind, where)
    (dx,) = unpack_grads(grads, ("dx",), where)
    _backward(grad_buffer(dx, "dx", cache.x_shape, cache.dtype, where), dy, cache, where, check_finite)


def _backward(dx, dy, cache, where, check_finite):
    dy = upstream(dy, cache.out_shape, cache.dtype, where, check_finite)
    backward_checked(dx, dy, cache)


def backward_checked(dx, dy, cache: PoolCache) -> None:
    """The pooling backward after validation: accumulate into dx."""
    geo = cache.geo
    dx4 = dx.reshape(geo.N, geo.C, geo.H, geo.W)
    dy4 = dy.reshape(geo.N, geo.C, geo.Ho, geo.Wo)
    launch = _launches(call_key(geo, cache.kind, cache.dtype))
    if cache.kind == "max":
        launch.backward(dx4, dy4, cache.arg, geo)
    else:
        launch.backward(dx4, dy4, geo)
