"""Element-wise activation, functional: ``y = sigma(x)`` and ``dL/dx = dL/dy sigma'(x)`` (kernels.activations)."""

from __future__ import annotations

import numpy as np

from .. import _jit
from .._checks import activation_code, as_array
from ..kernels import activations as kact
from .common import grad_buffer, unpack_grads, upstream


def activation_forward(x, activation, *, check_finite=None):
    """y = sigma(x) element-wise, any shape.  Returns (y, cache) with cache = (x, activation)."""
    where = "activation_forward"
    code = activation_code(activation, where)
    x = as_array(x, "x", where, check_finite=check_finite)
    y = np.empty_like(x)
    _jit.pick(kact.activation_forward, 8 * x.size)(y.reshape(-1), x.reshape(-1), code)
    return y, (x, activation)


def activation_backward(dy, cache, *, check_finite=None):
    """dx = dy * sigma'(x) element-wise, with the cache from activation_forward."""
    x = _cache_input(cache, "activation_backward")
    dx = np.zeros_like(x)
    _backward(dx, dy, cache, check_finite, "activation_backward")
    return dx


def activation_backward_into(grads, dy, cache, *, check_finite=None) -> None:
    """Accumulate (``+=``) dy * sigma'(x) into ``grads`` = (dx,), dx of x's shape and dtype."""
    where = "activation_backward_into"
    x = _cache_input(cache, where)
    (dx,) = unpack_grads(grads, ("dx",), where)
    _backward(grad_buffer(dx, "dx", x.shape, x.dtype, where), dy, cache, check_finite, where)


def _cache_input(cache, where: str) -> np.ndarray:
    if not (isinstance(cache, tuple) and len(cache) == 2 and isinstance(cache[0], np.ndarray)):
        raise TypeError(f"{where}: cache must be the (x, activation) pair returned by activation_forward")
    return cache[0]


def _backward(dx, dy, cache, check_finite, where):
    x, activation = cache
    code = activation_code(activation, where)
    dy = upstream(dy, x.shape, x.dtype, where, check_finite)
    _jit.pick(kact.activation_backward, 8 * x.size)(dx.reshape(-1), dy.reshape(-1), x.reshape(-1), code)
