"""Geometry of convolution and pooling: options parsed and validated, every size computed once.

:func:`conv_geometry` and :func:`pool_geometry` build the NamedTuple the
kernels receive (``kernels.conv.ConvGeometry``, ``kernels.pool.PoolGeometry``);
every output size in fastgrad goes through :func:`output_size`.  Like NNlib's
``DenseConvDims``: one object per call that owns the sizes, so no kernel and
no other function recomputes them.

Options (every one validated before any kernel runs):

* ``stride``, ``dilation``: int or one int per spatial dim, >= 1.
* ``padding``: int; one int per dim; one (before, after) pair per dim (for 1-D
  a bare pair ``(before, after)`` is also accepted); ``"valid"`` (no padding);
  or ``"same"``: out = ceil(in / stride) with total padding
  max((out - 1) stride + (k - 1) dilation + 1 - in, 0), the odd pixel going
  *after* (as TensorFlow and Flux do).
* ``groups``: divides C and M; K has shape (M, C // groups, *k).
"""

from __future__ import annotations

import functools
import numbers

import numpy as np

from ..kernels.conv import ROUND, ConvGeometry
from ..kernels.pool import PoolGeometry


def is_int(v) -> bool:
    """A Python or NumPy integer, not a bool."""
    if type(v) is int:  # the common case, without the slow abstract-class check below
        return True
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _frozen(value):
    """An option as a dict key: lists as tuples, each value with its type (2, 2.0 and True are equal keys otherwise)."""
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_frozen(v) for v in value))
    return (type(value), value)


def _memo(build):
    """Remember the geometry of each (shapes, options): a layer asks for the same one every call.

    Building it validates and parses the options in Python (about 60 us per conv
    call in the digits CNN step, profiled); the result depends only on the
    arguments, except ``where``, which only names the caller in an error, and
    errors are never remembered.
    """
    memo = {}

    @functools.wraps(build)
    def cached(*args):
        try:
            key = tuple(_frozen(a) for a in args[:-1])
            hash(key)
        except TypeError:  # an unhashable option: validated (and rejected or built) every time
            return build(*args)
        try:
            return memo[key]
        except KeyError:
            pass
        geo = build(*args)
        if len(memo) >= 1024:
            memo.clear()
        memo[key] = geo
        return geo

    return cached


def per_dim(value, nd: int, name: str, where: str, minimum: int = 1) -> tuple:
    """An int or a sequence of ``nd`` ints, each >= minimum, as a tuple of Python ints."""
    if is_int(value):
        vals = (value,) * nd
    elif isinstance(value, (tuple, list)) and len(value) == nd and all(is_int(v) for v in value):
        vals = tuple(value)
    elif isinstance(value, (tuple, list)) and all(is_int(v) for v in value):
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
    if is_int(padding):
        pairs = ((padding, padding),) * nd
    elif isinstance(padding, (tuple, list)):
        items = list(padding)
        if nd == 1 and len(items) == 2 and all(is_int(v) for v in items):
            items = [tuple(items)]  # 1-D: a bare (before, after) pair
        if len(items) != nd:
            raise ValueError(f"{where}: padding must have {nd} entries (one per spatial dim), got {padding!r}"[:290])
        pairs = []
        for p in items:
            if is_int(p):
                pairs.append((p, p))
            elif isinstance(p, (tuple, list)) and len(p) == 2 and all(is_int(v) for v in p):
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


def output_size(n_in: int, k: int, stride: int, pad_before: int, pad_after: int, dilation: int, dim: int, where: str) -> int:
    """Output length along one spatial dim: (n_in + pads - (k - 1) dilation - 1) // stride + 1.

    The one place fastgrad computes it (convolution and pooling alike).  Raises
    when the (dilated) window does not fit the padded input.
    """
    span = (k - 1) * dilation + 1
    padded = n_in + pad_before + pad_after
    if span > padded:
        extent = f"kernel extent {span} (kernel_size {k}, dilation {dilation})" if dilation != 1 else f"kernel_size {k}"
        raise ValueError(f"{where}: {extent} is larger than the padded input {padded} along spatial dim {dim}")
    return (padded - span) // stride + 1


def conv_output_shape(in_spatial, kernel, stride=1, padding=0, dilation=1, where: str = "conv_output_shape") -> tuple:
    """Output spatial size of a convolution (raises like conv_forward for impossible sizes)."""
    nd = len(in_spatial)
    kernel = per_dim(kernel, nd, "kernel_size", where)
    stride = per_dim(stride, nd, "stride", where)
    dilation = per_dim(dilation, nd, "dilation", where)
    pads = resolve_padding(padding, in_spatial, kernel, stride, dilation, where)
    return tuple(
        output_size(n, k, s, p[0], p[1], d, i, where)
        for i, (n, p, k, s, d) in enumerate(zip(in_spatial, pads, kernel, stride, dilation))
    )


def _round_up(n: int) -> int:
    return (n + ROUND - 1) // ROUND * ROUND


@_memo
def conv_geometry(x_shape, K_shape, stride, padding, dilation, groups: int, where: str) -> ConvGeometry:
    """The ConvGeometry of x (N, C, *spatial) and K (M, C // groups, *kernel); 1-D runs as H = kh = 1.

    ``groups`` must already be a validated int; channel counts are checked here.
    """
    nd = len(x_shape) - 2
    N, C = (int(v) for v in x_shape[:2])
    M, Cg = (int(v) for v in K_shape[:2])
    if C % groups or M % groups:
        raise ValueError(f"{where}: groups={groups} must divide in_channels={C} and out_channels={M}")
    if Cg != C // groups:
        raise ValueError(f"{where}: channel mismatch: K.shape[1]={Cg} but x has {C} channels / groups={groups} = {C // groups}")
    kernel = tuple(int(k) for k in K_shape[2:])
    stride = per_dim(stride, nd, "stride", where)
    dilation = per_dim(dilation, nd, "dilation", where)
    in_spatial = tuple(int(s) for s in x_shape[2:])
    pads = resolve_padding(padding, in_spatial, kernel, stride, dilation, where)
    out = conv_output_shape(in_spatial, kernel, stride, pads, dilation, where)
    if nd == 1:
        H, W, kh, kw, Ho, Wo = 1, in_spatial[0], 1, kernel[0], 1, out[0]
        sh, sw, dh, dw = 1, stride[0], 1, dilation[0]
        (ph0, ph1), (pw0, pw1) = (0, 0), pads[0]
    else:
        (H, W), (kh, kw), (Ho, Wo) = in_spatial, kernel, out
        (sh, sw), (dh, dw) = stride, dilation
        (ph0, ph1), (pw0, pw1) = pads
    # the stride-1 wide layout (kernels.conv): padded planes, wide output and input positions
    Hp = H + ph0 + ph1
    Wp = W + pw0 + pw1
    front = (kh - 1) * dh * Wp + (kw - 1) * dw
    Qr = _round_up(Hp * Wp)
    return ConvGeometry(
        N=N, C=C, H=H, W=W, M=M, groups=groups, Cg=Cg, Mg=M // groups, kh=kh, kw=kw, Ho=Ho, Wo=Wo,
        sh=sh, sw=sw, ph0=ph0, ph1=ph1, pw0=pw0, pw1=pw1, dil_h=dh, dil_w=dw,
        Hp=Hp, Wp=Wp, Lz=_round_up((Ho - 1) * Wp + Wo), PS=Hp * Wp + ROUND, front=front, Qr=Qr, LD=front + Qr,
    )


def conv_out_shape(geo: ConvGeometry, nd: int) -> tuple:
    """The user's output shape (N, M, *out_spatial) of a geometry with nd spatial dims."""
    return (geo.N, geo.M, geo.Wo) if nd == 1 else (geo.N, geo.M, geo.Ho, geo.Wo)


def pool_options(nd: int, kernel_size, stride, padding, where: str) -> tuple:
    """(kernel, stride, padding) as tuples of nd ints; stride None means kernel_size; padding <= kernel // 2."""
    kernel = per_dim(kernel_size, nd, "kernel_size", where)
    stride = kernel if stride is None else per_dim(stride, nd, "stride", where)
    pads = per_dim(padding, nd, "padding", where, minimum=0)
    for k, p in zip(kernel, pads):
        if p > k // 2:
            # as PyTorch: a larger pad could make a window of padding only
            raise ValueError(f"{where}: padding must be <= kernel_size // 2, got padding {padding!r} for kernel_size {kernel_size!r}"[:290])
    return kernel, stride, pads


def pool_output_shape(in_spatial, kernel_size, stride=None, padding=0, where: str = "pool_output_shape") -> tuple:
    """Output spatial size of a pooling window (floor mode, as PyTorch's ceil_mode=False)."""
    kernel, stride, pads = pool_options(len(in_spatial), kernel_size, stride, padding, where)
    return tuple(output_size(n, k, s, p, p, 1, i, where) for i, (n, k, s, p) in enumerate(zip(in_spatial, kernel, stride, pads)))


@_memo
def pool_geometry(x_shape, kernel_size, stride, padding, where: str) -> PoolGeometry:
    """The PoolGeometry of x (N, C, *spatial); 1-D runs as H = kh = 1."""
    nd = len(x_shape) - 2
    kernel, stride, pads = pool_options(nd, kernel_size, stride, padding, where)
    out = pool_output_shape(tuple(int(s) for s in x_shape[2:]), kernel, stride, pads, where)
    N, C = (int(v) for v in x_shape[:2])
    if nd == 1:
        return PoolGeometry(N, C, 1, int(x_shape[2]), 1, kernel[0], 1, stride[0], 0, pads[0], 1, out[0])
    H, W = int(x_shape[2]), int(x_shape[3])
    return PoolGeometry(N, C, H, W, kernel[0], kernel[1], stride[0], stride[1], pads[0], pads[1], out[0], out[1])
