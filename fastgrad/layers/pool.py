"""Pooling layers: MaxPool1D/2D and AvgPool1D/2D (no parameters)."""

from __future__ import annotations

import numpy as np

from .. import _checks
from .. import functional as F
from ..functional import geometry as FG
from ..functional import pool as FP
from .base import Layer


class _Pool(Layer):
    nd = 2
    kind = "max"

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        where = type(self).__name__
        self.kernel_size, self.stride, self.padding = FG.pool_options(self.nd, kernel_size, stride, padding, where)

    #: the (shape, dtype) and geometry of the last validated forward, as Dense's (see Dense.forward)
    _seen = None

    def forward(self, x):
        seen = self._seen
        if seen is not None and _checks.is_plain(x, seen[0], seen[1]):
            if _checks.get_check_finite():
                _checks.check_finite_values(x, "x", self._where("forward"))
            y, self._cache = FP.forward_checked(self.kind, x, seen[2])
            return y
        x = self._input(x, ndim=self.nd + 2)
        forward = F.max_pool_forward if self.kind == "max" else F.avg_pool_forward
        y, self._cache = forward(x, self.kernel_size, self.stride, self.padding, check_finite=False)
        self._seen = (x.shape, x.dtype, self._cache.geo)
        return y

    def backward(self, dy):
        cache = self._saved()
        dx = np.zeros(cache.x_shape, cache.dtype)
        if _checks.is_plain(dy, cache.out_shape, cache.dtype):
            # a plain array of the forward output's shape needs only the NaN scan of check_finite
            if _checks.get_check_finite():
                _checks.check_finite_values(dy, "dy", self._where("backward"))
            FP.backward_checked(dx, dy, cache)
            return dx
        dy = self._grad_input(dy, cache.out_shape, cache.dtype)
        backward_into = F.max_pool_backward_into if self.kind == "max" else F.avg_pool_backward_into
        backward_into((dx,), dy, cache, check_finite=False)
        return dx

    def get_config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}

    def output_shape(self, input_shape):
        where = self._where("output_shape")
        if len(input_shape) != self.nd + 1:
            raise ValueError(f"{where}: input_shape must be (C, *{self.nd} spatial dims), got {tuple(input_shape)}")
        out = FG.pool_output_shape(tuple(input_shape[1:]), self.kernel_size, self.stride, self.padding, where)
        return (int(input_shape[0]),) + out


class MaxPool1D(_Pool):
    """Max over windows of ``x (N, C, L)``; padding reads -inf; ties go to the first index."""

    nd = 1
    kind = "max"


class MaxPool2D(_Pool):
    """Max over windows of ``x (N, C, H, W)``; ``stride=None`` means kernel_size; padding <= kernel_size // 2
    reads -inf; ties go to the first index (row-major in the window); NaN propagates.
    """

    nd = 2
    kind = "max"


class AvgPool1D(_Pool):
    """Mean over windows of ``x (N, C, L)``; padding counts in the divisor (count_include_pad=True)."""

    nd = 1
    kind = "avg"


class AvgPool2D(_Pool):
    """Mean over windows of ``x (N, C, H, W)``; zero padding counts in the divisor (PyTorch's default)."""

    nd = 2
    kind = "avg"
