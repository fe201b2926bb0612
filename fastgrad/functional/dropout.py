"""Inverted dropout, functional: ``y = x * m`` with a random keep mask scaled by 1/(1-p) (kernels.dropout).

In training each element is kept with probability 1 - p and scaled by
1/(1 - p) (zeroed otherwise), so the expected output equals x and evaluation
is the identity, as ``torch.nn.functional.dropout``.  The mask is drawn from a
NumPy ``Generator``: the ``rng`` given, else fastgrad's default generator
(``fastgrad.random.default_generator``, reseeded by ``fg.manual_seed``).  The
backward reuses the forward's mask.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _jit
from .._checks import as_array, check_alloc, real_number
from ..kernels import dropout as kdrop
from ..random import default_generator
from .common import check_cache, grad_buffer, unpack_grads, upstream


class DropoutCache(NamedTuple):
    """The forward's mask, flat (size,) in x's dtype: 1/(1-p) where kept, 0 where dropped; None for the identity."""

    mask: np.ndarray | None
    shape: tuple
    dtype: np.dtype


def dropout_probability(p, where: str) -> float:
    """p as a float in [0, 1]."""
    return real_number(p, "p", where, low=0.0, high=1.0)


def dropout_forward(x, p=0.5, training=True, *, rng=None, check_finite=None):
    """y = x * m, m_k = Bernoulli(1 - p) / (1 - p) in training; y = x (the same array) otherwise.

    x any shape; ``p`` in [0, 1] (p = 1 zeroes everything); ``rng`` a
    ``numpy.random.Generator`` or None for fastgrad's default generator.  Returns
    ``(y, cache)``; the mask is drawn only in training with p > 0.
    """
    where = "dropout_forward"
    p = dropout_probability(p, where)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{where}: training must be True or False, got {type(training).__name__}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"{where}: rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    x = as_array(x, "x", where, check_finite=check_finite)
    if not training or p == 0.0:
        return x, DropoutCache(None, x.shape, x.dtype)
    check_alloc(where, x.dtype, [("y", x.shape), ("mask", x.shape)])
    draws = (default_generator() if rng is None else rng).random(x.size)
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    mask = np.where(draws >= p, x.dtype.type(scale), x.dtype.type(0))  # kept with probability 1 - p
    y = np.empty_like(x)
    _jit.pick(kdrop.dropout_forward, x.size)(y.reshape(-1), x.reshape(-1), mask)
    return y, DropoutCache(mask, x.shape, x.dtype)


def dropout_backward(dy, cache: DropoutCache, *, check_finite=None):
    """dx = dy * m with the forward's mask (dx = dy for the identity)."""
    check_cache(cache, DropoutCache, "dropout_forward", "dropout_backward")
    dx = np.zeros(cache.shape, cache.dtype)
    _backward(dx, dy, cache, check_finite, "dropout_backward")
    return dx


def dropout_backward_into(grads, dy, cache: DropoutCache, *, check_finite=None) -> None:
    """Accumulate (``+=``) dy * m into ``grads`` = (dx,) of x's shape and dtype."""
    where = "dropout_backward_into"
    check_cache(cache, DropoutCache, "dropout_forward", where)
    (dx,) = unpack_grads(grads, ("dx",), where)
    _backward(grad_buffer(dx, "dx", cache.shape, cache.dtype, where), dy, cache, check_finite, where)


def _backward(dx, dy, cache: DropoutCache, check_finite, where):
    dy = upstream(dy, cache.shape, cache.dtype, where, check_finite)
    if cache.mask is None:
        dx += dy
        return
    _jit.pick(kdrop.dropout_backward, dy.size)(dx.reshape(-1), dy.reshape(-1), cache.mask)
