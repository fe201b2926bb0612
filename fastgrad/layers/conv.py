"""Convolution layers Conv1D and Conv2D: Z_k = B_k + sum_j X_j (star) K_kj, Y_k = sigma(Z_k)."""

from __future__ import annotations

import numpy as np

from .. import _checks
from .. import functional as F
from ..functional import conv as FC
from ..functional import geometry as FG
from .._checks import activation_code, is_plain, positive_int
from .._workspace import recycled_zeros
from ..random import init_generator
from .base import Layer, check_param_sizes, uniform_init

_BIAS_MODES = ("tied", "untied", None)


class _ConvND(Layer):
    """Shared implementation; subclasses set ``nd`` (spatial dims)."""

    nd = 2

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias="tied",
        activation="identity",
        input_size=None,
        dtype=np.float32,
        seed=None,
    ):
        super().__init__(dtype)
        where = type(self).__name__
        nd = self.nd
        self.in_channels = positive_int(in_channels, "in_channels", where)
        self.out_channels = positive_int(out_channels, "out_channels", where)
        self.kernel_size = FG.per_dim(kernel_size, nd, "kernel_size", where)
        self.stride = FG.per_dim(stride, nd, "stride", where)
        self.dilation = FG.per_dim(dilation, nd, "dilation", where)
        self.groups = positive_int(groups, "groups", where)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"{where}: groups={self.groups} must divide in_channels={self.in_channels} and out_channels={self.out_channels}"
            )
        activation_code(activation, where)
        self.activation = activation
        if bias is True:
            bias = "tied"
        elif bias is False:
            bias = None
        if bias not in _BIAS_MODES:
            raise ValueError(f"{where}: bias must be 'tied', 'untied' or None, got {bias!r}"[:290])
        self.bias = bias
        self.input_size = None if input_size is None else FG.per_dim(input_size, nd, "input_size", where)
        # validates the padding spec now (the input size only matters for "same")
        FG.resolve_padding(padding, self.input_size or (1,) * nd, self.kernel_size, self.stride, self.dilation, where)
        self.padding = padding if isinstance(padding, str) else _jsonable(padding)
        if bias == "untied" and self.input_size is None:
            raise ValueError(f"{where}: bias='untied' (one bias per output position) needs input_size")
        cg = self.in_channels // self.groups
        fan_in = cg * int(np.prod(self.kernel_size))
        shapes = {"K": (self.out_channels, cg) + self.kernel_size}
        if bias == "tied":
            shapes["B"] = (self.out_channels,)
        elif bias == "untied":
            out = FG.conv_output_shape(self.input_size, self.kernel_size, self.stride, self.padding, self.dilation, where)
            shapes["B"] = (self.out_channels,) + out
        check_param_sizes(where, self.dtype, shapes)
        rng = init_generator(seed, where)  # seed=None: the default generator (fg.manual_seed)
        for name, shape in shapes.items():
            self.add_param(name, uniform_init(rng, shape, fan_in, self.dtype))

    #: what the last validated forward / backward saw, as Dense's (see Dense.forward); None: validate
    _seen = None
    _seen_grads = None

    def forward(self, x):
        K = self._params["K"]
        B = self._params.get("B")
        seen = self._seen
        if seen is not None and seen[1] is K and seen[2] is B and seen[3] is self.activation and is_plain(x, seen[0], K.dtype):
            if _checks.get_check_finite():
                _checks.check_finite_values(x, "x", self._where("forward"))
            geo, B3, code = seen[4]
            y, self._cache = FC.forward_checked(x, K, B, B3, geo, self.activation, code, self.nd)
            return y
        return self._forward(x)

    def _forward(self, x):
        where = self._where("forward")
        x = self._input(x, ndim=self.nd + 2)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{where}: x.shape[1]={x.shape[1]} does not match in_channels={self.in_channels}")
        if self.bias == "untied" and tuple(x.shape[2:]) != self.input_size:
            raise ValueError(
                f"{where}: untied bias was built for input_size={self.input_size}, got spatial size {tuple(x.shape[2:])}"
            )
        # the output size, checked with this layer's name in the message
        FG.conv_output_shape(tuple(x.shape[2:]), self.kernel_size, self.stride, self.padding, self.dilation, where)
        K = self.params["K"]
        B = self.params.get("B")
        y, cache = F.conv_forward(
            x, K, B, self.stride, self.padding, self.dilation,
            self.groups, self.activation, check_finite=False,  # x checked above; K, B are the layer's own
        )
        self._cache = cache
        # remembered for the fast path: this shape passed every check with these parameters
        self._seen = (x.shape, K, B, self.activation, (cache.geo, cache.B, activation_code(self.activation, where)))
        return y

    def backward(self, dy):
        return self._backward(dy, True)

    def backward_params(self, dy) -> None:
        """``backward`` without dL/dx: dK and dB only (a model's first layer)."""
        self._backward(dy, False)

    def _backward(self, dy, need_dx):
        cache = self._saved()
        gK = self._grads["K"]
        gB = self._grads.get("B")
        seen = self._seen_grads
        if (
            seen is not None
            and seen[1] is gK
            and seen[2] is gB
            and seen[3] is self.activation
            and cache.geo == seen[4]
            and is_plain(dy, seen[0], gK.dtype)
        ):
            if _checks.get_check_finite():
                _checks.check_finite_values(dy, "dy", self._where("backward"))
            dx = recycled_zeros(cache.x_shape, cache.x.dtype) if need_dx else None
            FC.backward_checked(dx, gK, gB, dy, cache, seen[5])
            return dx
        dy = self._grad_input(dy, cache.out_shape, self.dtype)
        dx = recycled_zeros(cache.x_shape, cache.x.dtype) if need_dx else None
        # the kernels accumulate straight into the layer's grads
        F.conv_backward_into((dx, self.grads["K"], self.grads.get("B")), dy, cache, check_finite=False)
        self._seen_grads = (dy.shape, gK, gB, self.activation, cache.geo, activation_code(self.activation, "backward"))
        return dx

    def get_config(self):
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding,
            "dilation": list(self.dilation),
            "groups": self.groups,
            "bias": self.bias,
            "activation": self.activation,
            "input_size": None if self.input_size is None else list(self.input_size),
            "dtype": np.dtype(self.dtype).name,
        }

    def output_shape(self, input_shape):
        where = self._where("output_shape")
        spatial = tuple(int(s) for s in input_shape[1:])
        if len(input_shape) != self.nd + 1:
            raise ValueError(f"{where}: input_shape must be (C, *{self.nd} spatial dims), got {tuple(input_shape)}")
        out = FG.conv_output_shape(spatial, self.kernel_size, self.stride, self.padding, self.dilation, where)
        return (self.out_channels,) + out


def _jsonable(padding):
    """Tuples -> lists (JSON round trip); ints stay ints."""
    if isinstance(padding, (tuple, list)):
        return [_jsonable(p) for p in padding]
    return int(padding)


class Conv1D(_ConvND):
    """1-D convolution, ``x (N, C, L) -> y (N, M, Lo)``; params ``K`` (M, C // groups, k), ``B``.

    Arguments as :class:`Conv2D` with one int per option (or a 1-tuple).
    """

    nd = 1


class Conv2D(_ConvND):
    """2-D convolution, ``x (N, C, H, W) -> y (N, M, Ho, Wo)`` (the cheat sheet's convolutional layer).

    Parameters ``K`` (M, C // groups, kh, kw) and ``B``: (M,) for ``bias="tied"``
    (default, one bias per output channel as PyTorch), (M, Ho, Wo) for
    ``bias="untied"`` (the cheat sheet's full bias maps; needs ``input_size``),
    absent for ``bias=None``.  stride/padding/dilation/groups as
    :func:`fastgrad.functional.conv_forward` (padding "same" works with stride:
    out = ceil(in / stride)).  Initialisation as PyTorch: U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) with fan_in = C // groups * kh * kw.  The activation is
    fused: backward uses dL/dz = dL/dy * sigma'(z) from the saved pre-activation.
    """

    nd = 2
