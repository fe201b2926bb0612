"""Layer and batch normalisation, functional (kernels.norm; equations there).

* ``layer_norm_forward(x, normalized_shape, gamma, beta, eps)``: statistics over
  the trailing ``normalized_shape`` axes of each sample, as
  ``torch.nn.functional.layer_norm``; gamma, beta shaped ``normalized_shape``.
* ``batch_norm_forward(x, gamma, beta, running_mean, running_var, training, eps)``:
  statistics per channel (axis 1) over the batch and spatial axes, x (N, C),
  (N, C, L) or (N, C, H, W).  Training uses the batch statistics and returns
  them in the cache (``cache.mean``, ``cache.var`` biased, ``cache.count``
  values per channel) so the caller can update its running statistics;
  evaluation uses ``running_mean`` / ``running_var``.  Nothing passed in is
  modified (unlike ``torch.nn.functional.batch_norm``, which updates the
  running statistics itself).

gamma and beta are both given or both None (no affine transform).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _jit
from .._checks import as_array, check_alloc, check_shape, real_number
from ..kernels import norm as knorm
from .common import EMPTY1, check_cache, grad_buffer, same_dtype, unpack_grads, upstream
from .geometry import is_int


class LayerNormCache(NamedTuple):
    """What layer_norm_backward needs: xhat (R, D), rstd (R,), gamma (normalized_shape) or None, x's shape."""

    xhat: np.ndarray
    rstd: np.ndarray
    gamma: np.ndarray | None
    x_shape: tuple
    normalized_shape: tuple


class BatchNormCache(NamedTuple):
    """What batch_norm_backward needs, and the statistics used: mean, var (biased), rstd (C,) each.

    xhat (N, C, S); gamma (C,) or None; training: whether the statistics came from the batch.
    """

    xhat: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    rstd: np.ndarray
    gamma: np.ndarray | None
    x_shape: tuple
    training: bool

    @property
    def count(self) -> int:
        """Values per channel the statistics were taken over (N times the spatial size)."""
        return int(self.xhat.shape[0] * self.xhat.shape[2])


def normalized_shape_tuple(normalized_shape, where: str) -> tuple:
    """An int or a non-empty sequence of ints >= 1, as a tuple."""
    shape = (normalized_shape,) if is_int(normalized_shape) else normalized_shape
    if not isinstance(shape, (tuple, list)) or not shape or not all(is_int(s) for s in shape):
        raise TypeError(f"{where}: normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}"[:290])
    if min(shape) < 1:
        raise ValueError(f"{where}: normalized_shape must hold sizes >= 1, got {tuple(shape)}")
    return tuple(int(s) for s in shape)


def _affine(gamma, beta, shape, x, where, check_finite):
    """(gamma, beta) as flat (size,) arrays of x's dtype, or the (0,) stand-ins when both are None."""
    if (gamma is None) != (beta is None):
        raise ValueError(f"{where}: gamma and beta must both be given or both be None (no affine transform)")
    if gamma is None:
        return None, EMPTY1[x.dtype], EMPTY1[x.dtype]
    out = []
    for name, value in (("gamma", gamma), ("beta", beta)):
        value = as_array(value, name, where, check_finite=check_finite)
        same_dtype(value, x, name, where)
        check_shape(value, shape, name, where)
        out.append(value)
    return out[0], out[0].reshape(-1), out[1].reshape(-1)


def _eps(eps, where):
    return real_number(eps, "eps", where, low=0.0)


def layer_norm_forward(x, normalized_shape, gamma=None, beta=None, eps=1e-5, *, check_finite=None):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta over the trailing ``normalized_shape`` axes.

    x (..., *normalized_shape) -> y of x's shape.  Returns ``(y, cache)``.
    """
    where = "layer_norm_forward"
    shape = normalized_shape_tuple(normalized_shape, where)
    eps = _eps(eps, where)
    x = as_array(x, "x", where, check_finite=check_finite)
    if x.shape[x.ndim - len(shape):] != shape or x.ndim < len(shape):
        raise ValueError(f"{where}: x's trailing axes must be normalized_shape {shape}, got x.shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{where}: x is empty (shape {x.shape})")
    gamma, g, b = _affine(gamma, beta, shape, x, where, check_finite)
    D = int(np.prod(shape))
    R = x.size // D
    check_alloc(where, x.dtype, [("y", x.shape), ("xhat", x.shape)])
    y = np.empty((R, D), x.dtype)
    xhat = np.empty((R, D), x.dtype)
    stats = knorm.NormStats(*(np.empty(R, x.dtype) for _ in range(3)))
    _jit.pick(knorm.layer_norm_forward, 4 * x.size)(y, xhat, stats, x.reshape(R, D), g, b, x.dtype.type(eps))
    return y.reshape(x.shape), LayerNormCache(xhat, stats.rstd, gamma, x.shape, shape)


def layer_norm_backward(dy, cache: LayerNormCache, *, check_finite=None):
    """(dx, dgamma, dbeta) of layer_norm_forward; dgamma, dbeta None without the affine transform."""
    return _backward_new(dy, cache, LayerNormCache, "layer_norm_backward", check_finite)


def layer_norm_backward_into(grads, dy, cache: LayerNormCache, *, check_finite=None) -> None:
    """Accumulate (``+=``) into ``grads`` = (dx, dgamma, dbeta); dgamma, dbeta None without the affine transform."""
    _backward_into(grads, dy, cache, LayerNormCache, "layer_norm_backward_into", check_finite)


def batch_norm_forward(x, gamma=None, beta=None, running_mean=None, running_var=None, training=True, eps=1e-5, *,
                       check_finite=None):
    """y = gamma * (x - mean_c) / sqrt(var_c + eps) + beta per channel c of x (N, C, *spatial).

    training: the batch's mean and biased variance (needs more than one value
    per channel); otherwise ``running_mean`` and ``running_var`` (C,).  Returns
    ``(y, cache)``; ``cache.mean`` / ``cache.var`` / ``cache.count`` are the
    statistics used.
    """
    where = "batch_norm_forward"
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{where}: training must be True or False, got {type(training).__name__}")
    eps = _eps(eps, where)
    x = as_array(x, "x", where, ndim=(2, 3, 4, 5), check_finite=check_finite)
    if x.size == 0:
        raise ValueError(f"{where}: x is empty (shape {x.shape})")
    N, C = x.shape[:2]
    S = x.size // (N * C)
    if training and N * S < 2:
        raise ValueError(f"{where}: training needs more than one value per channel to estimate a variance, got x.shape {x.shape}")
    gamma, g, b = _affine(gamma, beta, (C,), x, where, check_finite)
    stats = knorm.NormStats(*(np.empty(C, x.dtype) for _ in range(3)))
    if not training:
        for name, value, dst in (("running_mean", running_mean, stats.mean), ("running_var", running_var, stats.var)):
            if value is None:
                raise ValueError(f"{where}: {name} is required when training=False")
            value = as_array(value, name, where, check_finite=check_finite)
            same_dtype(value, x, name, where)
            check_shape(value, (C,), name, where)
            dst[...] = value
    check_alloc(where, x.dtype, [("y", x.shape), ("xhat", x.shape)])
    y = np.empty((N, C, S), x.dtype)
    xhat = np.empty((N, C, S), x.dtype)
    _jit.pick(knorm.batch_norm_forward, 4 * x.size)(y, xhat, stats, x.reshape(N, C, S), g, b, x.dtype.type(eps), bool(training))
    return y.reshape(x.shape), BatchNormCache(xhat, stats.mean, stats.var, stats.rstd, gamma, x.shape, bool(training))


def batch_norm_backward(dy, cache: BatchNormCache, *, check_finite=None):
    """(dx, dgamma, dbeta) of batch_norm_forward; dgamma, dbeta None without the affine transform."""
    return _backward_new(dy, cache, BatchNormCache, "batch_norm_backward", check_finite)


def batch_norm_backward_into(grads, dy, cache: BatchNormCache, *, check_finite=None) -> None:
    """Accumulate (``+=``) into ``grads`` = (dx, dgamma, dbeta); dgamma, dbeta None without the affine transform."""
    _backward_into(grads, dy, cache, BatchNormCache, "batch_norm_backward_into", check_finite)


# -- shared by both ---------------------------------------------------------------------
_FORWARD = {LayerNormCache: "layer_norm_forward", BatchNormCache: "batch_norm_forward"}


def _param_shape(cache) -> tuple:
    return cache.normalized_shape if isinstance(cache, LayerNormCache) else (cache.x_shape[1],)


def _backward_new(dy, cache, kind, where, check_finite):
    check_cache(cache, kind, _FORWARD[kind], where)
    dx = np.zeros(cache.x_shape, cache.xhat.dtype)
    dgamma = None if cache.gamma is None else np.zeros_like(cache.gamma)
    dbeta = None if cache.gamma is None else np.zeros_like(cache.gamma)
    _backward(dx, dgamma, dbeta, dy, cache, check_finite, where)
    return dx, dgamma, dbeta


def _backward_into(grads, dy, cache, kind, where, check_finite):
    check_cache(cache, kind, _FORWARD[kind], where)
    dx, dgamma, dbeta = unpack_grads(grads, ("dx", "dgamma", "dbeta"), where)
    dt = cache.xhat.dtype
    dx = grad_buffer(dx, "dx", cache.x_shape, dt, where)
    dgamma = grad_buffer(dgamma, "dgamma", _param_shape(cache), dt, where, optional=True)
    dbeta = grad_buffer(dbeta, "dbeta", _param_shape(cache), dt, where, optional=True)
    if (dgamma is None) != (cache.gamma is None) or (dbeta is None) != (cache.gamma is None):
        raise ValueError(f"{where}: grads.dgamma and grads.dbeta must be None exactly when the forward had no gamma, beta")
    _backward(dx, dgamma, dbeta, dy, cache, check_finite, where)


def _flat_or_empty(arr, dtype):
    return EMPTY1[dtype] if arr is None else arr.reshape(-1)


def _backward(dx, dgamma, dbeta, dy, cache, check_finite, where):
    """Both norms' backward kernels on the saved (R, D) / (N, C, S) layout: dx, dgamma, dbeta accumulate."""
    dt = cache.xhat.dtype
    dy = upstream(dy, cache.x_shape, dt, where, check_finite)
    shape = cache.xhat.shape
    gamma = _flat_or_empty(cache.gamma, dt)
    dparams = (_flat_or_empty(dgamma, dt), _flat_or_empty(dbeta, dt))
    if isinstance(cache, LayerNormCache):
        grads = knorm.NormGrads(dx.reshape(shape), *dparams)
        _jit.pick(knorm.layer_norm_backward, 6 * dy.size)(grads, dy.reshape(shape), cache.xhat, cache.rstd, gamma)
    else:
        grads = knorm.BatchNormGrads(dx.reshape(shape), *dparams)
        _jit.pick(knorm.batch_norm_backward, 6 * dy.size)(grads, dy.reshape(shape), cache.xhat, cache.rstd, gamma, cache.training)
