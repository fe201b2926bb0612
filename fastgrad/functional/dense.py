"""Dense layer, functional: ``y = sigma(b + W x)`` over a batch and its gradients (kernels.dense)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._checks import activation_code, as_array, check_alloc, check_shape
from .._workspace import owned, recycled, recycled_zeros, scratch
from ..kernels import activations as kact
from ..kernels import dense as kdense
from ..kernels import products
from .common import EMPTY1, EMPTY2, Launch, call_key, grad_buffer, remembered, same_dtype, unpack_grads, upstream


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
    return forward_checked(x, W, b, activation, code)


def forward_checked(x, W, b, activation: str, code: int):
    """dense_forward after validation (the Dense layer calls it once it knows its input is valid)."""
    N, n = x.shape
    m = W.shape[0]
    z = recycled((N, m), x.dtype)
    # identity: y is z, one array serves both (sigma' = 1 never reads z's values)
    y = recycled((N, m), x.dtype) if code != 0 else z
    bias = EMPTY1[x.dtype] if b is None else b
    _forward_call(call_key(N, n, m, x.dtype)).run(y, z, x, W, bias, code)
    return y, DenseCache(x, W, b, z, activation)


class _ForwardCall:
    """The forward's product for one (N, n, m, dtype): plan, packing buffers and launch, made once."""

    def __init__(self, N, n, m, dtype):
        self.dtype = dtype
        self.plan = products.gemm_plan(N, m, n, dtype)
        self.sizes = [(size,) for size in products.packed_sizes(self.plan, dtype)]
        bufs = owned(dtype, *self.sizes)
        self.packed = None if bufs is None else products.Packed(*bufs)
        self.launch = Launch(kdense.dense_forward, N * m * n)

    def run(self, y, z, x, W, bias, code):
        if self.packed is not None:
            self.launch(y, z, x, W, bias, code, self.packed, self.plan)
            return
        with scratch(self.dtype, *self.sizes) as (ap, bp):
            self.launch(y, z, x, W, bias, code, products.Packed(ap, bp), self.plan)


@remembered
def _forward_call(key) -> _ForwardCall:
    return _ForwardCall(*key[:4])


def dense_backward(dy, cache: DenseCache, *, check_finite=None):
    """Gradients of dense_forward: returns (dx, dW, db), db None when b was None.

    dL/dz = dy * sigma'(z);  db = sum_s dL/dz;  dW = sum_s dL/dz x^T;  dx = dL/dz W.
    """
    _check_cache(cache, "dense_backward")
    x, W, b = cache.x, cache.W, cache.b
    dx = recycled_zeros(x.shape, x.dtype)
    dW = recycled_zeros(W.shape, x.dtype)
    db = np.zeros(W.shape[0], x.dtype) if b is not None else None
    _backward(dx, dW, db, dy, cache, check_finite, "dense_backward")
    return dx, dW, db


def dense_backward_into(grads, dy, cache: DenseCache, *, check_finite=None) -> None:
    """Accumulate (``+=``) the gradients of dense_forward into ``grads`` = (dx, dW, db).

    dx (N, n), dW (m, n) and db (m,) (or None when the forward had no bias) are
    writable C-contiguous arrays of the forward's dtype; nothing is allocated
    for them (the Dense layer passes its own ``grads``).  dx None: dL/dx is not
    computed at all (a model's first layer, whose input needs no gradient).
    """
    where = "dense_backward_into"
    _check_cache(cache, where)
    dx, dW, db = unpack_grads(grads, ("dx", "dW", "db"), where)
    dt = cache.x.dtype
    dx = grad_buffer(dx, "dx", cache.x.shape, dt, where, optional=True)
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
    shapes = [(N, m)] if code != 0 else []
    for plan in plans:
        shapes += [(size,) for size in products.packed_sizes(plan, x.dtype)]
    check_alloc(where, x.dtype, [("scratch", (sum(math.prod(s) for s in shapes),))])
    backward_checked(dx, dW, db, dy, x, W, z, code)


def backward_checked(dx, dW, db, dy, x, W, z, code: int) -> None:
    """_backward after validation: accumulate dx (None: not computed), dW, db (None: no bias)."""
    N, n = x.shape
    m = W.shape[0]
    call = _backward_call(call_key(N, n, m, x.dtype, code != 0, dx is not None))
    empty = EMPTY1[x.dtype]
    grads = kdense.DenseGrads(EMPTY2[x.dtype] if dx is None else dx, dW, empty if db is None else db)
    call.run(grads, dy, x, W, z, code)


class _BackwardCall:
    """The backward for one (N, n, m, dtype, sigma is not the identity, dx wanted): plans, scratch, launches.

    Scratch: dL/dz (unless sigma is the identity) and the packing buffers of both
    products; without dx its plan is ``products.NO_PRODUCT`` (no work in the launch).
    """

    def __init__(self, N, n, m, dtype, has_dz, need_dx):
        self.dtype = dtype
        self.plans = (products.gemm_plan(N, n, m, dtype) if need_dx else products.NO_PRODUCT, products.gemm_plan(m, n, N, dtype))
        self.shapes = [(N, m)] if has_dz else []
        for plan in self.plans:
            self.shapes += [(size,) for size in products.packed_sizes(plan, dtype)]
        bufs = owned(dtype, *self.shapes)
        # kept scratch: dL/dz and the two products' packing buffers, bundled once
        self.bufs = None if bufs is None else self._bundle(bufs, has_dz)
        self.has_dz = has_dz
        self.dz = Launch(kact.activation_dz, 8 * N * m)
        self.products = Launch(kdense.dense_backward, N * m * n)

    @staticmethod
    def _bundle(bufs, has_dz):
        """(dL/dz scratch or None, Packed of dx, Packed of dW) from the scratch arrays."""
        dz = bufs.pop(0) if has_dz else None
        return dz, products.Packed(bufs[0], bufs[1]), products.Packed(bufs[2], bufs[3])

    def run(self, grads, dy, x, W, z, code):
        if self.bufs is not None:
            self._run(self.bufs, grads, dy, x, W, z, code)
            return
        with scratch(self.dtype, *self.shapes) as bufs:
            self._run(self._bundle(bufs, self.has_dz), grads, dy, x, W, z, code)

    def _run(self, bufs, grads, dy, x, W, z, code):
        dz, packed_dx, packed_dw = bufs
        if code == 0:
            dz = dy  # identity: sigma' = 1
        else:
            self.dz(dz.reshape(-1), dy.reshape(-1), z.reshape(-1), code)  # dL/dz = dy * sigma'(z), one element-wise pass
        self.products(grads, dz, x, W, packed_dx, packed_dw, *self.plans)


@remembered
def _backward_call(key) -> _BackwardCall:
    return _BackwardCall(*key[:6])
