"""Convolution, functional: validate, build the geometry, allocate, call the kernels (kernels.conv).

Layout is batch first and channels second (PyTorch): x (N, C, L) for 1-D and
(N, C, H, W) for 2-D.  The number of spatial dimensions comes from
``x.ndim``; 1-D problems run through the 2-D kernels as H = 1 (a reshape, no
copy).  Options (stride, padding incl. "same", dilation, groups) are parsed
once into a :class:`~fastgrad.kernels.conv.ConvGeometry`
(:mod:`fastgrad.functional.geometry`).

* ``B``: None; (M,) tied (one bias per output channel, as PyTorch); or
  (M, *out_spatial) untied (the cheat sheet's full bias maps B_k).
* ``activation``: fused, as in dense: the forward keeps z = pre-activation in
  the cache and the backward uses dL/dz = dL/dy * sigma'(z).

Memory per call: the outputs (y and z; one array when the activation is the
identity), and in the backward dx, dK, dB plus one dL/dz array of y's size
when the activation is not the identity (the identity uses dy directly).
Stride 1 also uses short-lived workspaces: a padded copy of x and a wide z in
the forward; the padded x, a wide dL/dz and a wide dx in the backward.  The
im2col path (:func:`conv_path`) keeps the columns of x (C kh kw values per
sample and output position) from the forward to the backward, and uses one y-sized product output, dL/dz moved to
(M, N P), the columns of dL/dX and the product core's packing buffers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import activation_code, as_array, check_alloc, positive_int
from .._workspace import recycled, recycled_zeros
from ..kernels import activations as kact
from ..kernels import conv as kconv
from ..kernels import conv_im2col as kim
from ..kernels import products
from ..kernels.conv import ConvGeometry
from ..kernels.products import pack_tap_weights
from .common import NO_BIAS3, NO_DX4, Launch, call_key, grad_buffer, remembered, same_dtype, unpack_grads, upstream
from .geometry import conv_geometry, conv_out_shape


class ConvCache(NamedTuple):
    """What conv_backward needs: 4-D views of x, K, the bias (or None), z, the geometry and options."""

    x: np.ndarray  # (N, C, H, W)
    K: np.ndarray  # (M, Cg, kh, kw)
    B: np.ndarray | None  # (M, 1, 1) tied, (M, Ho, Wo) untied
    z: np.ndarray  # (N, M, Ho, Wo) pre-activation
    geo: ConvGeometry
    activation: str
    nd: int  # 1 or 2 spatial dims
    x_shape: tuple  # the user's shapes, for dx, dK, dB
    K_shape: tuple
    bias_shape: tuple | None
    #: stride 1: x padded into the wide layout by the forward, read again by dL/dK
    #: (kept rather than padded twice); None on the other paths
    xp: np.ndarray | None
    #: the product-core path (:func:`conv_path`): the forward's columns of x, read again by dL/dK
    cols: np.ndarray | None

    @property
    def out_shape(self) -> tuple:
        """The user's shape of y and dy: (N, M, *out_spatial)."""
        return conv_out_shape(self.geo, self.nd)


def conv_forward(x, K, B=None, stride=1, padding=0, dilation=1, groups=1, activation="identity", *, check_finite=None):
    """Z_k = B_k + sum_j X_j (star) K_kj, Y_k = sigma(Z_k) over a batch; returns ``(y, cache)``.

    x (N, C, L) or (N, C, H, W); K (M, C // groups, *k); B None, (M,) tied or
    (M, *out_spatial) untied -> y (N, M, *out_spatial).  Options: module doc.
    """
    where = "conv_forward"
    code = activation_code(activation, where)
    x = as_array(x, "x", where, ndim=(3, 4), check_finite=check_finite)
    nd = x.ndim - 2
    K = as_array(K, "K", where, check_finite=check_finite)
    same_dtype(K, x, "K", where)
    if K.ndim != x.ndim:
        raise ValueError(f"{where}: K must be {x.ndim}-D (M, C//groups, *kernel) for a {x.ndim}-D x, got shape {K.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: x has an empty batch (shape {x.shape})")
    if min(x.shape[1:]) == 0 or min(K.shape) == 0:
        raise ValueError(f"{where}: x and K must have no zero-length axis, got x {x.shape} and K {K.shape}")
    groups = positive_int(groups, "groups", where)
    geo = conv_geometry(x.shape, K.shape, stride, padding, dilation, groups, where)
    full_out = conv_out_shape(geo, nd)
    B3 = None
    if B is not None:
        B = as_array(B, "B", where, check_finite=check_finite)
        same_dtype(B, x, "B", where)
        if B.shape == (geo.M,):
            B3 = B.reshape(geo.M, 1, 1)
        elif B.shape == (geo.M,) + full_out[2:]:
            B3 = B.reshape(geo.M, geo.Ho, geo.Wo)
        else:
            raise ValueError(
                f"{where}: B must have shape ({geo.M},) (tied) or {(geo.M,) + full_out[2:]} (untied bias maps), got {B.shape}"
            )
    check_alloc(where, x.dtype, [("y", full_out), ("z", full_out)])
    return forward_checked(x, K, B, B3, geo, activation, code, nd)


def forward_checked(x, K, B, B3, geo: ConvGeometry, activation: str, code: int, nd: int):
    """conv_forward after validation (the Conv layers call it once they know their input is valid).

    B3 is the bias as (M, 1, 1) tied or (M, Ho, Wo) untied, None without bias.
    """
    x4 = x.reshape(geo.N, geo.C, geo.H, geo.W)
    K4 = K.reshape(geo.M, geo.Cg, geo.kh, geo.kw)
    z = recycled((geo.N, geo.M, geo.Ho, geo.Wo), x.dtype)
    # identity: y is z, one array serves both (sigma' = 1 never reads z)
    y = z if code == 0 else recycled(z.shape, x.dtype)
    bias = NO_BIAS3[x.dtype] if B3 is None else B3
    launch = _launches(call_key(geo, x.dtype, conv_path(geo)))
    xp = None
    cols = None
    if launch.path == "wide":  # stride 1: long contiguous loops over wide planes (kernels.conv)
        xp = recycled((geo.N, geo.C, geo.PS), x.dtype)  # the kernel pads x into it
        zw = recycled((geo.N, geo.M, geo.Lz), x.dtype)
        wp = pack_tap_weights(K4.reshape(geo.groups, geo.Mg, -1))
        launch.forward(y, z, xp, x4, wp, bias, geo, code, zw, launch.forward_offsets)
    elif launch.path == "im2col":  # the products on the product core (kernels.conv_im2col)
        cols = recycled((_cols_size(geo),), x.dtype)  # the kernel writes x's columns into it
        zt = recycled((geo.M * geo.N * geo.Ho * geo.Wo,), x.dtype)
        packed = _packed(launch.plan_fwd, x.dtype)
        bufs = kim.Im2colBuffers(cols, zt, zt[:0])
        launch.forward(y, z, x4, K4.reshape(geo.M, -1), bias, geo, code, bufs, packed, launch.plan_fwd)
    else:
        launch.forward(y, z, x4, K4, bias, geo, code)
    cache = ConvCache(x4, K4, B3, z, geo, activation, nd, x.shape, K.shape, None if B is None else B.shape, xp, cols)
    return y.reshape(conv_out_shape(geo, nd)), cache


#: stride 1 runs the wide kernels on output planes of more positions than this, im2col below
SMALL_PLANE = 16


def conv_path(geo: ConvGeometry) -> str:
    """Which kernels compute a convolution: "wide" (kernels.conv's ``*_s1`` kernels over wide
    planes), "im2col" (kernels.conv_im2col: products on the product core) or "direct"
    (kernels.conv's general kernels, the plain index form the tests check the others against).

    Measured in one process, forward + backward, min of 7-9 interleaved rounds, 2 threads,
    AMD EPYC Zen 3 (AVX2), float32 (N, C, H, M, k) ms, direct / im2col / wide:

    * stride 2: (32, 16, 32, 32, 3) 82.6 / 9.6; (32, 1, 28, 8, 5) 2.92 / 1.01; depthwise
      (32, 32, 16, 32, 3, groups 32) 6.50 / 6.14; (8, 8, 8, 8, 3) 0.545 / 0.199: im2col everywhere.
    * stride 1, valid: (32, 1, 28, 8, 5) 5.83 / 2.11 / 0.74; (32, 16, 32, 32, 3) 174 / 27.5 / 11.5;
      (16, 64, 28, 64, 3) 504 / 46.1 / 22.3: wide; im2col packs kh kw copies of x.
    * stride 1 on planes of 4 x 4 outputs, where a wide row is 1.5x the output row and
      dL/dK's dot products are 24 long: 'same' (32, 64, 4, 64, 3) im2col 4.45 / wide 7.00
      (float64 6.56 / 10.0); (32, 32, 6, 64, 3) valid 2.53 / 3.75; (32, 16, 4, 32, 3) 'same'
      1.24 / 1.32.  On 7 x 7 and larger wide wins, except with many channels on 8 x 8, where
      the dtypes disagree: (32, 16, 8, 32, 3) 'same' 2.06 / 1.97 (float64 3.98 / 2.79),
      (32, 32, 7, 32, 3) 3.08 / 2.54, (32, 16, 16, 32, 3) 8.54 / 2.69; but (32, 32, 8, 64, 3)
      5.29 / 7.18 in float32 and 9.81 / 9.33 in float64.  The threshold is a plane size, not
      a tuned constant: the wide layout's waste and dL/dK's short rows are what im2col avoids.
    """
    if geo.sh == 1 and geo.sw == 1 and geo.Ho * geo.Wo > SMALL_PLANE:
        return "wide"
    return "im2col"


#: groups of at most this many output channels (depthwise: 1) run the im2col products row by row
#: (kernels.conv_im2col), in one launch for all groups.  Measured on AMD EPYC Zen 5 (AVX-512), 2 threads,
#: forward + backward, medians of 20 calls, 3 interleaved rounds, ms packed products / row by row,
#: (N, C, H, M, k, stride, groups): float32 (32, 32, 16, 32, 3, 2, 32) depthwise 2.13-2.75 / 0.87-0.95;
#: groups 16 (Mg 2) 1.66-1.95 / 0.92-0.99; Mg 4 2.03-2.17 / 0.84-0.91; Mg 8 1.68-1.81 / 0.95-1.05;
#: Mg 16 (groups 2) 1.51-1.60 / 1.29-1.38; (32, 3, 32, 16, 3, 2, 1) 0.80-0.82 / 0.65-0.70; but
#: Mg 32 (groups 1) 1.71-2.09 / 1.94-2.07, float64 2.47-3.31 / 3.74-3.93: the packed products from 32.
FEW_CHANNELS = 16


def _cols_size(geo: ConvGeometry) -> int:
    """Values of the im2col matrix: one row per (input channel, tap), one column per (sample, output position)."""
    return geo.C * geo.kh * geo.kw * geo.N * geo.Ho * geo.Wo


def _packed(plan, dtype) -> products.Packed:
    """Packing buffers for one product of the im2col path, from the recycled pool."""
    return products.Packed(*(recycled((size,), dtype) for size in products.packed_sizes(plan, dtype)))


class _Launches:
    """The kernel launches of one geometry and dtype (stride 1: the wide-layout kernels and their tap
    tables; im2col: the products' plans), made once: a training step asks for the same geometry every call."""

    def __init__(self, geo: ConvGeometry, dtype, path: str):
        self.path = path
        work = geo.N * geo.M * geo.Ho * geo.Wo * geo.Cg * geo.kh * geo.kw
        self.dz = Launch(kact.activation_dz, 8 * geo.N * geo.M * geo.Ho * geo.Wo)
        if path == "wide":
            self.forward_offsets = forward_offsets(geo)
            self.forward_taps = forward_taps(geo)
            self.data_offsets = data_offsets(geo)
            self.forward = Launch(kconv.conv_forward_s1, work)
            self.filter = Launch(kconv.conv_backward_filter_s1, work)
            self.data = Launch(kconv.conv_backward_data_s1, work)
        elif path == "im2col":
            NP = geo.N * geo.Ho * geo.Wo
            R = geo.Cg * geo.kh * geo.kw
            if geo.Mg <= FEW_CHANNELS:  # NO_PRODUCT plans: the kernels run the products row by row
                self.plan_fwd = self.plan_dk = self.plan_dx = products.NO_PRODUCT
            else:
                self.plan_fwd = products.gemm_plan(geo.Mg, NP, R, dtype)
                self.plan_dk = products.gemm_plan(geo.Mg, R, NP, dtype)
                self.plan_dx = products.gemm_plan(R, NP, geo.Mg, dtype)
            self.forward = Launch(kim.conv_forward_im2col, work)
            self.backward = Launch(kim.conv_backward_im2col, work)
        else:
            self.forward = Launch(kconv.conv_forward, work)
            self.filter = Launch(kconv.conv_backward_filter, work)
            self.data = Launch(kconv.conv_backward_data, work)


@remembered
def _launches(key) -> _Launches:
    return _Launches(key[0], key[1], key[2])


def conv_backward(dy, cache: ConvCache, *, check_finite=None):
    """Gradients of conv_forward: returns ``(dx, dK, dB)``, dB None when B was None.

    dL/dZ_k = dL/dY_k (.) sigma'(Z_k);  dL/dB_k = dL/dZ_k (summed over positions when tied);
    dL/dK_kj = X_j (star) dL/dZ_k;  dL/dX_j = sum_k dL/dZ_k (*) K_kj (full convolution).
    """
    _check_cache(cache, "conv_backward")
    dx = recycled_zeros(cache.x_shape, cache.x.dtype)
    dK = recycled_zeros(cache.K_shape, cache.x.dtype)
    dB = None if cache.B is None else np.zeros(cache.bias_shape, cache.x.dtype)
    _backward(dx, dK, dB, dy, cache, check_finite, "conv_backward")
    return dx, dK, dB


def conv_backward_into(grads, dy, cache: ConvCache, *, check_finite=None) -> None:
    """Accumulate (``+=``) the gradients of conv_forward into ``grads`` = (dx, dK, dB).

    dx, dK and dB have the shapes of the forward's x, K and B (dB None when
    there was no bias): writable C-contiguous arrays of the forward's dtype
    (the Conv layers pass their own ``grads``).  dx None: dL/dX is not computed.
    """
    where = "conv_backward_into"
    _check_cache(cache, where)
    dx, dK, dB = unpack_grads(grads, ("dx", "dK", "dB"), where)
    dt = cache.x.dtype
    dx = grad_buffer(dx, "dx", cache.x_shape, dt, where, optional=True)
    dK = grad_buffer(dK, "dK", cache.K_shape, dt, where)
    if cache.B is None:
        if dB is not None:
            raise ValueError(f"{where}: grads.dB must be None: the forward had no bias")
    else:
        dB = grad_buffer(dB, "dB", cache.bias_shape, dt, where)
    _backward(dx, dK, dB, dy, cache, check_finite, where)


def _check_cache(cache, where: str) -> None:
    if not isinstance(cache, ConvCache):
        raise TypeError(f"{where}: cache must be the ConvCache returned by conv_forward, got {type(cache).__name__}")


def _backward(dx, dK, dB, dy, cache: ConvCache, check_finite, where):
    """Accumulate into dx, dK, dB (the user's shapes; dB None without bias)."""
    dy = upstream(dy, cache.out_shape, cache.x.dtype, where, check_finite)
    backward_checked(dx, dK, dB, dy, cache, activation_code(cache.activation, where))


def backward_checked(dx, dK, dB, dy, cache: ConvCache, code: int) -> None:
    """_backward after validation: dy of the forward output's shape, the grads of the user's shapes.

    dx None: dL/dX is not computed (a model's first layer, whose input needs no gradient).
    """
    x, K, _B3, z, geo = cache[:5]
    dy4 = dy.reshape(z.shape)
    # the forward's path, from what it kept
    path = "wide" if cache.xp is not None else "im2col" if cache.cols is not None else "direct"
    launch = _launches(call_key(geo, x.dtype, path))
    if code == 0:
        dz = dy4
    else:
        dz = recycled(z.shape, z.dtype)
        launch.dz(dz.reshape(-1), dy4.reshape(-1), z.reshape(-1), code)
    dK4 = dK.reshape(K.shape)
    dB3 = NO_BIAS3[x.dtype] if dB is None else dB.reshape(cache.B.shape)
    if launch.path == "wide":  # stride 1: long contiguous loops over wide planes (kernels.conv)
        dzw = recycled((geo.N, geo.M, geo.LD), x.dtype)  # the filter kernel widens dz into it
        launch.filter(dK4.reshape(geo.M, -1), dB3, dz, dzw, cache.xp, geo, launch.forward_taps)
        if dx is not None:
            dxw = recycled((geo.N, geo.C, geo.Qr), x.dtype)
            kt = pack_tap_weights(filters_by_input(K, geo).reshape(geo.groups, geo.Cg, -1))
            launch.data(dx.reshape(x.shape), dzw, kt, geo, dxw, launch.data_offsets)
    elif launch.path == "im2col":  # the products on the product core (kernels.conv_im2col)
        dzt = recycled((geo.M * geo.N * geo.Ho * geo.Wo,), x.dtype)  # the kernel transposes dz into it
        if dx is None:
            dx4, dcols, plan_dx = NO_DX4[x.dtype], dzt[:0], products.NO_PRODUCT
        else:
            dx4, dcols, plan_dx = dx.reshape(x.shape), recycled((_cols_size(geo),), x.dtype), launch.plan_dx
        p_dk = _packed(launch.plan_dk, x.dtype)
        p_dx = _packed(plan_dx, x.dtype)
        grads = kim.Im2colGrads(dx4, dK4.reshape(geo.M, -1), dB3)
        bufs = kim.Im2colBuffers(cache.cols, dzt, dcols)
        launch.backward(grads, dz, K.reshape(geo.M, -1), geo, bufs, p_dk, p_dx, launch.plan_dk, plan_dx)
    else:
        launch.filter(dK4, dB3, dz, x, geo)
        if dx is not None:
            launch.data(dx.reshape(x.shape), dz, K, geo)


# --------------------------------------------------------------------------
# the stride-1 wide layout (kernels.conv, "stride-1 fast path")
# --------------------------------------------------------------------------


def _offsets(geo: ConvGeometry) -> np.ndarray:
    """Offset ki dil_h Wp + kj dil_w of every tap (ki, kj), in row-major order."""
    ki, kj = np.divmod(np.arange(geo.kh * geo.kw, dtype=np.int64), geo.kw)
    return ki * (geo.dil_h * geo.Wp) + kj * geo.dil_w


def forward_taps(geo: ConvGeometry) -> np.ndarray:
    """The forward's tap table (Cg kh kw, 2): row (c kh + ki) kw + kj = (c, offset of (ki, kj))."""
    offsets = _offsets(geo)
    taps = np.empty((geo.Cg, offsets.size, 2), np.int64)
    taps[:, :, 0] = np.arange(geo.Cg)[:, None]
    taps[:, :, 1] = offsets[None, :]
    return taps.reshape(-1, 2)


def forward_offsets(geo: ConvGeometry) -> np.ndarray:
    """The forward's tap offsets (Cg kh kw,): term (c kh + ki) kw + kj at c PS + ki dil_h Wp + kj dil_w."""
    offsets = _offsets(geo)
    return (np.arange(geo.Cg, dtype=np.int64)[:, None] * geo.PS + offsets[None, :]).reshape(-1)


def data_offsets(geo: ConvGeometry) -> np.ndarray:
    """dL/dX's tap offsets (Mg kh kw,): term (k kh + ki) kw + kj at k LD + front - (ki dil_h Wp + kj dil_w)."""
    offsets = _offsets(geo)
    return (np.arange(geo.Mg, dtype=np.int64)[:, None] * geo.LD + geo.front - offsets[None, :]).reshape(-1)


def filters_by_input(K4: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """KT (C, Mg kh kw): KT[g Cg + c, (k kh + ki) kw + kj] = K[g Mg + k, c, ki, kj], the weights dL/dX sums over."""
    T = geo.kh * geo.kw
    grouped = K4.reshape(geo.groups, geo.Mg, geo.Cg, T).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(grouped).reshape(geo.C, geo.Mg * T)
