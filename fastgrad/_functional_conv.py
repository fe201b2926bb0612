"""Functional convolution and pooling: validate, resolve options, allocate, call the kernels.

Re-exported by :mod:`fastgrad.functional`.  Layout is batch first and
channels second (PyTorch): x (N, C, L) for 1-D and (N, C, H, W) for 2-D.  The
number of spatial dimensions comes from ``x.ndim``; 1-D problems run through
the 2-D kernels as H = 1 (a reshape, no copy).

Options (every one validated before any kernel runs):

* ``stride``, ``dilation``: int or one int per spatial dim, >= 1.
* ``padding``: int; one int per dim; one (before, after) pair per dim (for 1-D
  a bare pair ``(before, after)`` is also accepted); ``"valid"`` (no padding);
  or ``"same"``: out = ceil(in / stride) with total padding
  max((out - 1) stride + (k - 1) dilation + 1 - in, 0), the odd pixel going
  *after* (as TensorFlow and Flux do).  Padding is zeros: stride 1 reads a
  zero-padded copy of x (kernels.conv.pad_wide); other strides clip loop ranges.
* ``groups``: divides C and M; K has shape (M, C // groups, *k).
  ``groups = C`` is a depthwise convolution.
* ``B``: None; (M,) tied (one bias per output channel, as PyTorch); or
  (M, *out_spatial) untied (the cheat sheet's full bias maps B_k).
* ``activation``: fused, as in dense: the forward keeps z = pre-activation in
  the cache and the backward uses dL/dz = dL/dy * sigma'(z).

Memory per call: the outputs (y and z; one array when the activation is the
identity), and in the backward dx, dK, dB plus one dL/dz array of y's size
when the activation is not the identity (the identity uses dy directly).
Stride 1 also uses short-lived workspaces: a padded copy of x and a wide z in
the forward; the padded x, a wide dL/dz and a wide dx in the backward.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from . import _jit
from ._checks import activation_code, as_array, check_alloc, positive_int
from .kernels import conv as _conv
from .kernels import pool as _pool
from .kernels.conv import ConvDims
from .kernels.pool import PoolDims

__all__ = [
    "ConvCache",
    "ConvDims",
    "PoolCache",
    "PoolDims",
    "avg_pool_backward",
    "avg_pool_forward",
    "conv_backward",
    "conv_forward",
    "conv_output_shape",
    "max_pool_backward",
    "max_pool_forward",
    "pool_output_shape",
    "resolve_padding",
]

_NO_BIAS = {
    np.dtype(np.float32): np.zeros((0, 1, 1), np.float32),
    np.dtype(np.float64): np.zeros((0, 1, 1), np.float64),
}


# --------------------------------------------------------------------------
# option parsing
# --------------------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def per_dim(value, nd: int, name: str, where: str, minimum: int = 1) -> tuple:
    """An int or a sequence of ``nd`` ints, each >= minimum, as a tuple of Python ints."""
    if _is_int(value):
        vals = (value,) * nd
    elif isinstance(value, (tuple, list)) and len(value) == nd and all(_is_int(v) for v in value):
        vals = tuple(value)
    elif isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        raise ValueError(f"{where}: {name} must be an int or {nd} ints (one per spatial dim), got {tuple(value)!r}")
    else:
        raise TypeError(f"{where}: {name} must be an int or a tuple of {nd} ints, got {value!r}"[:290])
    for v in vals:
        if v < minimum:
            raise ValueError(f"{where}: {name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in vals)


def resolve_padding(padding, in_spatial, kernel, stride, dilation, where: str = "conv") -> tuple:
    """Padding as one (before, after) pair per spatial dim.

    ``in_spatial``, ``kernel``, ``stride``, ``dilation`` are tuples with one
    entry per dim (``in_spatial`` is only read for ``"same"``).
    """
    nd = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding == "same":
            pairs = []
            for n_in, k, s, d in zip(in_spatial, kernel, stride, dilation):
                out = -(-n_in // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - n_in, 0)
                pairs.append((total // 2, total - total // 2))
            return tuple(pairs)
        raise ValueError(f"{where}: padding must be an int, a tuple, 'valid' or 'same', got {padding!r}"[:290])
    if _is_int(padding):
        pairs = ((padding, padding),) * nd
    elif isinstance(padding, (tuple, list)):
        items = list(padding)
        if nd == 1 and len(items) == 2 and all(_is_int(v) for v in items):
            items = [tuple(items)]  # 1-D: a bare (before, after) pair
        if len(items) != nd:
            raise ValueError(f"{where}: padding must have {nd} entries (one per spatial dim), got {padding!r}"[:290])
        pairs = []
        for p in items:
            if _is_int(p):
                pairs.append((p, p))
            elif isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p):
                pairs.append((p[0], p[1]))
            else:
                raise TypeError(f"{where}: each padding entry must be an int or a (before, after) pair of ints, got {p!r}"[:290])
        pairs = tuple(pairs)
    else:
        raise TypeError(f"{where}: padding must be an int, a tuple, 'valid' or 'same', got {type(padding).__name__}")
    for b, a in pairs:
        if b < 0 or a < 0:
            raise ValueError(f"{where}: padding must be >= 0, got {padding!r}"[:290])
    return tuple((int(b), int(a)) for b, a in pairs)


def _out_size(n_in, pads, k, s, d, dim: int, where: str) -> int:
    span = (k - 1) * d + 1
    padded = n_in + pads[0] + pads[1]
    if span > padded:
        raise ValueError(
            f"{where}: kernel extent {span} (kernel_size {k}, dilation {d}) is larger than the "
            f"padded input {padded} along spatial dim {dim}"
        )
    return (padded - span) // s + 1


def conv_output_shape(in_spatial, kernel, stride=1, padding=0, dilation=1, where: str = "conv_output_shape") -> tuple:
    """Output spatial size of a convolution (raises like conv_forward for impossible sizes)."""
    nd = len(in_spatial)
    kernel = per_dim(kernel, nd, "kernel_size", where)
    stride = per_dim(stride, nd, "stride", where)
    dilation = per_dim(dilation, nd, "dilation", where)
    pads = resolve_padding(padding, in_spatial, kernel, stride, dilation, where)
    return tuple(_out_size(n, p, k, s, d, i, where) for i, (n, p, k, s, d) in enumerate(zip(in_spatial, pads, kernel, stride, dilation)))


def _as2d(a: np.ndarray, nd: int) -> np.ndarray:
    """(N, C, L) -> (N, C, 1, L) view: 1-D runs through the 2-D kernels."""
    return a if nd == 2 else a.reshape(a.shape[:2] + (1,) + a.shape[2:])


def _same_dtype(arr, ref, name, where):
    if arr.dtype != ref.dtype:
        raise TypeError(f"{where}: {name} has dtype {arr.dtype} but x has dtype {ref.dtype}; they must match")


# --------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------


class ConvCache(NamedTuple):
    """What conv_backward needs: 4-D views of x, K, the bias (or None), z, and the options."""

    x: np.ndarray  # (N, C, H, W)
    K: np.ndarray  # (M, Cg, kh, kw)
    B: np.ndarray | None  # (M, 1, 1) tied, (M, Ho, Wo) untied
    z: np.ndarray  # (N, M, Ho, Wo) pre-activation
    dims: ConvDims
    activation: str
    nd: int  # 1 or 2 spatial dims
    bias_shape: tuple | None


def conv_forward(x, K, B=None, stride=1, padding=0, dilation=1, groups=1, activation="identity", *, check_finite=None):
    """Z_k = B_k + sum_j X_j (star) K_kj, Y_k = sigma(Z_k) over a batch; returns ``(y, cache)``.

    x (N, C, L) or (N, C, H, W); K (M, C // groups, *k); B None, (M,) tied or
    (M, *out_spatial) untied -> y (N, M, *out_spatial).  Options: module doc.
    """
    return _conv_forward(x, K, B, stride, padding, dilation, groups, activation, check_finite, "conv_forward")


def _conv_forward(x, K, B, stride, padding, dilation, groups, activation, check_finite, where):
    code = activation_code(activation, where)
    x = as_array(x, "x", where, ndim=(3, 4), check_finite=check_finite)
    nd = x.ndim - 2
    K = as_array(K, "K", where, check_finite=check_finite)
    _same_dtype(K, x, "K", where)
    if K.ndim != x.ndim:
        raise ValueError(f"{where}: K must be {x.ndim}-D (M, C//groups, *kernel) for a {x.ndim}-D x, got shape {K.shape}")
    N, C = x.shape[:2]
    M, Cg = K.shape[:2]
    if N == 0:
        raise ValueError(f"{where}: x has an empty batch (shape {x.shape})")
    if min(x.shape[1:]) == 0 or min(K.shape) == 0:
        raise ValueError(f"{where}: x and K must have no zero-length axis, got x {x.shape} and K {K.shape}")
    groups = positive_int(groups, "groups", where)
    if C % groups or M % groups:
        raise ValueError(f"{where}: groups={groups} must divide in_channels={C} and out_channels={M}")
    if Cg != C // groups:
        raise ValueError(
            f"{where}: channel mismatch: K.shape[1]={Cg} but x has {C} channels / groups={groups} = {C // groups}"
        )
    kernel = tuple(int(k) for k in K.shape[2:])
    stride = per_dim(stride, nd, "stride", where)
    dilation = per_dim(dilation, nd, "dilation", where)
    in_spatial = tuple(int(s) for s in x.shape[2:])
    pads = resolve_padding(padding, in_spatial, kernel, stride, dilation, where)
    out = tuple(_out_size(n, p, k, s, d, i, where) for i, (n, p, k, s, d) in enumerate(zip(in_spatial, pads, kernel, stride, dilation)))
    if nd == 1:
        dims = ConvDims(1, stride[0], 0, 0, pads[0][0], pads[0][1], 1, dilation[0], groups)
    else:
        dims = ConvDims(stride[0], stride[1], pads[0][0], pads[0][1], pads[1][0], pads[1][1], dilation[0], dilation[1], groups)
    B3 = None
    bias_shape = None
    if B is not None:
        B = as_array(B, "B", where, check_finite=check_finite)
        _same_dtype(B, x, "B", where)
        if B.shape == (M,):
            B3 = B.reshape(M, 1, 1)
        elif B.shape == (M,) + out:
            B3 = B.reshape((M,) + (1,) * (2 - nd) + out)
        else:
            raise ValueError(
                f"{where}: B must have shape ({M},) (tied) or {(M,) + out} (untied bias maps), got {B.shape}"
            )
        bias_shape = B.shape
    full_out = (N, M) + out
    check_alloc(where, x.dtype, [("y", full_out), ("z", full_out)])
    x4 = _as2d(x, nd)
    K4 = _as2d(K, nd)
    z = np.empty((N, M) + (1,) * (2 - nd) + out, x.dtype)
    # identity: y is z, one array serves both (sigma' = 1 never reads z)
    y = z if code == 0 else np.empty_like(z)
    work = N * M * z.shape[2] * z.shape[3] * Cg * K4.shape[2] * K4.shape[3]
    B3k = _NO_BIAS[x.dtype] if B3 is None else B3
    if dims.sh == 1 and dims.sw == 1:  # stride 1: long contiguous loops over wide planes (kernels.conv)
        kh, kw = K4.shape[2:]
        Lz = _conv.wide_geometry(x4.shape[2], x4.shape[3], kh, kw, dims)[2]
        xp = _conv.pad_wide(x4, kh, kw, dims)
        zw = np.empty((N, M, Lz), x.dtype)
        _jit.pick(_conv.conv_forward_s1, work)(y, z, xp, K4, B3k, dims, code, zw)
    else:
        _jit.pick(_conv.conv_forward, work)(y, z, x4, K4, B3k, dims, code)
    return y.reshape(full_out), ConvCache(x4, K4, B3, z, dims, activation, nd, bias_shape)


def conv_backward(dy, cache: ConvCache, *, check_finite=None):
    """Gradients of conv_forward: returns ``(dx, dK, dB)``, dB None when B was None.

    dL/dZ_k = dL/dY_k (.) sigma'(Z_k);  dL/dB_k = dL/dZ_k (summed over positions when tied);
    dL/dK_kj = X_j (star) dL/dZ_k;  dL/dX_j = sum_k dL/dZ_k (*) K_kj (full convolution).
    """
    where = "conv_backward"
    if not isinstance(cache, ConvCache):
        raise TypeError(f"{where}: cache must be the ConvCache returned by conv_forward, got {type(cache).__name__}")
    dx = np.zeros_like(cache.x)
    dK = np.zeros_like(cache.K)
    dB = None if cache.B is None else np.zeros_like(cache.B)
    _conv_backward_into(dx, dK, dB, dy, cache, check_finite, where)
    out_x = dx.reshape(dx.shape[:2] + dx.shape[3:]) if cache.nd == 1 else dx
    out_K = dK.reshape(dK.shape[:2] + dK.shape[3:]) if cache.nd == 1 else dK
    return out_x, out_K, (None if dB is None else dB.reshape(cache.bias_shape))


def _conv_backward_into(dx, dK, dB, dy, cache: ConvCache, check_finite, where):
    """Accumulate (+=) the gradients into dx (x's 4-D shape), dK (K's 4-D shape), dB (B3's shape or None)."""
    x, K, _B3, z, dims, activation, nd, _ = cache
    dy = as_array(dy, "dy", where, dtype=x.dtype, check_finite=check_finite)
    expected = z.shape if nd == 2 else z.shape[:2] + z.shape[3:]
    if dy.shape != expected:
        raise ValueError(f"{where}: dy must have shape {expected} (the forward output), got {dy.shape}")
    dy4 = dy.reshape(z.shape)
    code = activation_code(activation, where)
    if code == 0:
        dz = dy4
    else:
        dz = np.empty_like(z)
        _jit.pick(_conv.conv_dz, 8 * z.size)(dz.reshape(-1), dy4.reshape(-1), z.reshape(-1), code)
    N, M, Ho, Wo = z.shape
    work = N * M * Ho * Wo * K.shape[1] * K.shape[2] * K.shape[3]
    dBk = _NO_BIAS[x.dtype] if dB is None else dB
    if dims.sh == 1 and dims.sw == 1:  # stride 1: long contiguous loops over wide planes (kernels.conv)
        kh, kw = K.shape[2:]
        Qr = _conv.wide_geometry(x.shape[2], x.shape[3], kh, kw, dims)[5]
        xp = _conv.pad_wide(x, kh, kw, dims)
        dzw = _conv.widen_dz(dz, kh, kw, dims, x.shape[2], x.shape[3])
        _jit.pick(_conv.conv_backward_kernel_s1, work)(dK, dBk, dz, dzw, xp, dims)
        _jit.pick(_conv.conv_backward_data_s1, work)(dx, dzw, K, dims, np.empty(x.shape[:2] + (Qr,), x.dtype))
    else:
        _jit.pick(_conv.conv_backward_kernel, work)(dK, dBk, dz, x, dims)
        _jit.pick(_conv.conv_backward_data, work)(dx, dz, K, dims)


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------


class PoolCache(NamedTuple):
    """What the pooling backward needs: input shape/dtype, dims, argmax (max only), 1-D flag."""

    x_shape: tuple  # 4-D (N, C, H, W)
    dtype: np.dtype
    dims: PoolDims
    arg: np.ndarray | None  # int64 (N, C, Ho, Wo) flat index ih * W + iw, max pooling only
    nd: int
    kind: str  # "max" or "avg"


def pool_output_shape(in_spatial, kernel_size, stride=None, padding=0, where: str = "pool_output_shape") -> tuple:
    """Output spatial size of a pooling window (floor mode, as PyTorch's ceil_mode=False)."""
    kernel, stride, pads = _pool_options(len(in_spatial), kernel_size, stride, padding, where)
    out = []
    for i, (n, k, s, p) in enumerate(zip(in_spatial, kernel, stride, pads)):
        if k > n + 2 * p:
            raise ValueError(f"{where}: kernel_size {k} is larger than the padded input {n + 2 * p} along spatial dim {i}")
        out.append((n + 2 * p - k) // s + 1)
    return tuple(out)


def _pool_options(nd, kernel_size, stride, padding, where):
    kernel = per_dim(kernel_size, nd, "kernel_size", where)
    stride = kernel if stride is None else per_dim(stride, nd, "stride", where)
    pads = per_dim(padding, nd, "padding", where, minimum=0)
    for k, p in zip(kernel, pads):
        if p > k // 2:
            # as PyTorch: a larger pad could make a window of padding only
            raise ValueError(f"{where}: padding must be <= kernel_size // 2, got padding {padding!r} for kernel_size {kernel_size!r}"[:290])
    return kernel, stride, pads


def _pool_setup(x, kernel_size, stride, padding, check_finite, where):
    x = as_array(x, "x", where, ndim=(3, 4), check_finite=check_finite)
    nd = x.ndim - 2
    if x.shape[0] == 0 or min(x.shape[1:]) == 0:
        raise ValueError(f"{where}: x must have no zero-length axis, got shape {x.shape}")
    kernel, stride, pads = _pool_options(nd, kernel_size, stride, padding, where)
    out = pool_output_shape(tuple(x.shape[2:]), kernel, stride, pads, where)
    if nd == 1:
        dims = PoolDims(1, kernel[0], 1, stride[0], 0, pads[0])
    else:
        dims = PoolDims(kernel[0], kernel[1], stride[0], stride[1], pads[0], pads[1])
    full_out = x.shape[:2] + out
    check_alloc(where, x.dtype, [("y", full_out)])
    return x, _as2d(x, nd), nd, dims, full_out


def max_pool_forward(x, kernel_size, stride=None, padding=0, *, check_finite=None):
    """y = max over each window (padding = -inf; ties go to the first index); returns ``(y, cache)``.

    x (N, C, L) or (N, C, H, W); kernel_size, stride (None means kernel_size) and
    padding (<= kernel_size // 2, symmetric): int or one int per spatial dim.
    The cache keeps the int64 flat index of each window's maximum.
    """
    return _pool_forward("max", x, kernel_size, stride, padding, check_finite, "max_pool_forward")


def avg_pool_forward(x, kernel_size, stride=None, padding=0, *, check_finite=None):
    """y = mean over each window, padding counted in the divisor (count_include_pad=True); returns ``(y, cache)``.

    Options as :func:`max_pool_forward`.
    """
    return _pool_forward("avg", x, kernel_size, stride, padding, check_finite, "avg_pool_forward")


def _pool_forward(kind, x, kernel_size, stride, padding, check_finite, where):
    x, x4, nd, dims, full_out = _pool_setup(x, kernel_size, stride, padding, check_finite, where)
    shape4 = x4.shape[:2] + ((1,) if nd == 1 else ()) + full_out[2:]
    y = np.empty(shape4, x.dtype)
    work = y.size * dims.kh * dims.kw
    if kind == "max":
        arg = np.empty(shape4, np.int64)
        _jit.pick(_pool.max_pool_forward, work)(y, arg, x4, dims)
    else:
        arg = None
        _jit.pick(_pool.avg_pool_forward, work)(y, x4, dims)
    return y.reshape(full_out), PoolCache(x4.shape, x.dtype, dims, arg, nd, kind)


def _pool_backward(dy, cache, kind, where, check_finite):
    if not isinstance(cache, PoolCache) or cache.kind != kind:
        raise TypeError(f"{where}: cache must be the PoolCache returned by {kind}_pool_forward, got {type(cache).__name__}")
    N, C, _H, W = cache.x_shape
    dy = as_array(dy, "dy", where, dtype=cache.dtype, check_finite=check_finite)
    shape4 = (N, C) + _pool_out4(cache)
    expected = shape4 if cache.nd == 2 else shape4[:2] + shape4[3:]
    if dy.shape != expected:
        raise ValueError(f"{where}: dy must have shape {expected} (the forward output), got {dy.shape}")
    dx = np.zeros(cache.x_shape, cache.dtype)
    dy4 = dy.reshape(shape4)
    if kind == "max":
        _jit.pick(_pool.max_pool_backward, dy.size)(dx, dy4, cache.arg)
    else:
        _jit.pick(_pool.avg_pool_backward, dy.size * cache.dims.kh * cache.dims.kw)(dx, dy4, cache.dims)
    return dx if cache.nd == 2 else dx.reshape(N, C, W)


def _pool_out4(cache) -> tuple:
    d = cache.dims
    H, W = cache.x_shape[2:]
    return ((H + 2 * d.ph - d.kh) // d.sh + 1, (W + 2 * d.pw - d.kw) // d.sw + 1)


def max_pool_backward(dy, cache: PoolCache, *, check_finite=None):
    """dx: each dy goes to its window's saved maximum (accumulated where windows overlap)."""
    return _pool_backward(dy, cache, "max", "max_pool_backward", check_finite)


def avg_pool_backward(dy, cache: PoolCache, *, check_finite=None):
    """dx: each dy / (kh kw) goes to every in-bounds position of its window."""
    return _pool_backward(dy, cache, "avg", "avg_pool_backward", check_finite)
