"""Dense layer, functional: ``y = sigma(b + W x)`` over a batch and its gradients (kernels.dense)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _jit
from .._checks import activation_code, as_array, check_alloc, check_shape
from .._workspace import scratch
from ..kernels import activations as kact
from ..kernels import dense as kdense
from ..kernels import products
from .common import EMPTY1, grad_buffer, same_dtype, unpack_grads, upstream


class DenseCache(NamedTuple):
    """What dense_backward needs: the input, weights, pre-activations, activation."""

    x: np.ndarray
    W: np.ndarray
    b: np.ndarray | None
    z: np.ndarray
    activation: str


def dense_forward(x, W, b=None, activation="identity", *, check_finite=None):
    """y = sigma(b + W x) over a batch: x (N, n), W (m, n), b (m,) or None -> y (N, m).

    Returns ``(y, cache)``.  ``z`` (the pre-activation) is kept in the cache.
    """
    where = "dense_forward"
    code = activation_code(activation, where)
    x = as_array(x, "x", where, ndim=2, check_finite=check_finite)
    W = as_array(W, "W", where, ndim=2, check_finite=check_finite)
    same_dtype(W, x, "W", where)
    N, n = x.shape
    m = W.shape[0]
    if N == 0:
        raise ValueError(f"{where}: x has an empty batch (shape {x.shape})")
    if W.shape[1] != n:
        raise ValueError(f"{where}: W.shape[1]={W.shape[1]} does not match x.shape[1]={n}")
    if b is not None:
        b = as_array(b, "b", where, ndim=1, check_finite=check_finite)
        same_dtype(b, x, "b", where)
        check_shape(b, (m,), "b", where)
    check_alloc(where, x.dtype, [("y", (N, m)), ("z", (N, m))])
    z = np.empty((N, m), x.dtype)
    # identity: y is z, one array serves both (sigma' = 1 never reads z's values)
    y = np.empty((N, m), x.dtype) if code != 0 else z
    bias = EMPTY1[x.dtype] if b is None else b
    plan = products.gemm_plan(N, m, n, x.dtype)
    with scratch(x.dtype, *[(size,) for size in products.packed_sizes(plan, x.dtype)]) as (ap, bp):
        _jit.pick(kdense.dense_forward, N * m * n)(y, z, x, W, bias, code, products.Packed(ap, bp), plan)
    return y, DenseCache(x, W, b, z, activation)


def dense_backward(dy, cache: DenseCache, *, check_finite=None):
    """Gradients of dense_forward: returns (dx, dW, db), db None when b was None.

    dL/dz = dy * sigma'(z);  db = sum_s dL/dz;  dW = sum_s dL/dz x^T;  dx = dL/dz W.
    """
    _check_cache(cache, "dense_backward")
    x, W, b = cache.x, cache.W, cache.b
    dx = np.zeros_like(x)
    dW = np.zeros_like(W)
    db = np.zeros(W.shape[0], x.dtype) if b is not None else None
    _backward(dx, dW, db, dy, cache, check_finite, "dense_backward")
    return dx, dW, db


def dense_backward_into(grads, dy, cache: DenseCache, *, check_finite=None) -> None:
    """Accumulate (``+=``) the gradients of dense_forward into ``grads`` = (dx, dW, db).

    dx (N, n), dW (m, n) and db (m,) (or None when the forward had no bias) are
    writable C-contiguous arrays of the forward's dtype; nothing is allocated
    for them (the Dense layer passes its own ``grads``).
    """
    where = "dense_backward_into"
    _check_cache(cache, where)
    dx, dW, db = unpack_grads(grads, ("dx", "dW", "db"), where)
    dt = cache.x.dtype
    dx = grad_buffer(dx, "dx", cache.x.shape, dt, where)
    dW = grad_buffer(dW, "dW", cache.W.shape, dt, where)
    db = grad_buffer(db, "db", (cache.W.shape[0],), dt, where, optional=True)
    if (db is None) != (cache.b is None):
        raise ValueError(f"{where}: grads.db must be None exactly when the forward had no bias")
    _backward(dx, dW, db, dy, cache, check_finite, where)


def _check_cache(cache, where: str) -> None:
    if not isinstance(cache, DenseCache):
        raise TypeError(f"{where}: cache must be the DenseCache returned by dense_forward, got {type(cache).__name__}")


def _backward(dx, dW, db, dy, cache: DenseCache, check_finite, where):
    x, W, _b, z, activation = cache
    dy = upstream(dy, z.shape, x.dtype, where, check_finite)
    N, n = x.shape
    m = W.shape[0]
    code = activation_code(activation, where)
    plans = (products.gemm_plan(N, n, m, x.dtype), products.gemm_plan(m, n, N, x.dtype))  # dx, dW
    # scratch: dL/dz (unless sigma is the identity) and the packing buffers of both products
    shapes = [(N, m)] if code != 0 else []
    for plan in plans:
        shapes += [(size,) for size in products.packed_sizes(plan, x.dtype)]
    check_alloc(where, x.dtype, [("scratch", (sum(math.prod(s) for s in shapes),))])
    with scratch(x.dtype, *shapes) as bufs:
        if code == 0:
            dz = dy  # identity: sigma' = 1
        else:
            dz = bufs.pop(0)  # dL/dz = dy * sigma'(z), one element-wise pass
            _jit.pick(kact.activation_dz, 8 * dz.size)(dz.reshape(-1), dy.reshape(-1), z.reshape(-1), code)
        grads = kdense.DenseGrads(dx, dW, EMPTY1[x.dtype] if db is None else db)
        packed = (products.Packed(bufs[0], bufs[1]), products.Packed(bufs[2], bufs[3]))
        _jit.pick(kdense.dense_backward, N * m * n)(grads, dz, x, W, *packed, *plans)
