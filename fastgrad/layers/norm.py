"""Normalisation layers: LayerNorm (per sample) and BatchNorm1D/2D (per channel, with running statistics)."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import as_array, positive_int, real_number
from ..functional.norm import normalized_shape_tuple
from .base import Layer, check_param_sizes


def _affine_flag(value, name: str, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be True or False, got {type(value).__name__}")
    return bool(value)


class _Normalization(Layer):
    """The backward both norms share; subclasses name their functional ``_backward_into``."""

    def backward(self, dy):
        cache = self._saved()
        dy = self._grad_input(dy, cache.x_shape, cache.xhat.dtype)
        dx = np.zeros(cache.x_shape, cache.xhat.dtype)
        self._backward_into((dx, self.grads.get("gamma"), self.grads.get("beta")), dy, cache, check_finite=False)
        return dx


class LayerNorm(_Normalization):
    """``y = gamma * (x - mean) / sqrt(var + eps) + beta`` over the trailing ``normalized_shape`` axes of x.

    As ``torch.nn.LayerNorm``: mean and biased variance per sample, parameters
    ``gamma`` (ones) and ``beta`` (zeros) shaped ``normalized_shape`` when
    ``elementwise_affine``; the same computation in training and evaluation.
    """

    _backward_into = staticmethod(F.layer_norm_backward_into)

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, dtype=np.float32):
        super().__init__(dtype)
        where = "LayerNorm"
        self.normalized_shape = normalized_shape_tuple(normalized_shape, where)
        self.eps = real_number(eps, "eps", where, low=0.0)
        self.elementwise_affine = _affine_flag(elementwise_affine, "elementwise_affine", where)
        if self.elementwise_affine:
            check_param_sizes(where, self.dtype, {"gamma": self.normalized_shape, "beta": self.normalized_shape})
            self.add_param("gamma", np.ones(self.normalized_shape, self.dtype))
            self.add_param("beta", np.zeros(self.normalized_shape, self.dtype))

    def forward(self, x):
        where = self._where("forward")
        x = self._input(x)
        k = len(self.normalized_shape)
        if x.ndim < k or x.shape[x.ndim - k:] != self.normalized_shape:
            raise ValueError(f"{where}: x's trailing axes must be normalized_shape {self.normalized_shape}, got x.shape {x.shape}")
        y, self._cache = F.layer_norm_forward(
            x, self.normalized_shape, self.params.get("gamma"), self.params.get("beta"), self.eps, check_finite=False
        )
        return y

    def get_config(self):
        return {
            "normalized_shape": list(self.normalized_shape),
            "eps": self.eps,
            "elementwise_affine": self.elementwise_affine,
            "dtype": np.dtype(self.dtype).name,
        }


class _BatchNorm(_Normalization):
    """Shared implementation; subclasses set ``ndims`` (the accepted input ranks)."""

    ndims = (2, 3)
    _backward_into = staticmethod(F.batch_norm_backward_into)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32):
        super().__init__(dtype)
        where = type(self).__name__
        self.num_features = positive_int(num_features, "num_features", where)
        self.eps = real_number(eps, "eps", where, low=0.0)
        self.momentum = real_number(momentum, "momentum", where, low=0.0, high=1.0)
        self.affine = _affine_flag(affine, "affine", where)
        C = self.num_features
        check_param_sizes(where, self.dtype, {"gamma": (C,), "beta": (C,)})
        if self.affine:
            self.add_param("gamma", np.ones(C, self.dtype))
            self.add_param("beta", np.zeros(C, self.dtype))
        self.add_buffer("running_mean", np.zeros(C, self.dtype))
        self.add_buffer("running_var", np.ones(C, self.dtype))

    def forward(self, x):
        where = self._where("forward")
        x = as_array(x, "x", where, ndim=self.ndims, dtype=self.dtype)  # the buffers' dtype, also without affine
        if x.shape[1] != self.num_features:
            raise ValueError(f"{where}: x.shape[1]={x.shape[1]} does not match num_features={self.num_features}")
        training = bool(self.training)
        if training and x.size // x.shape[1] < 2:
            raise ValueError(f"{where}: training needs more than one value per channel, got x.shape {x.shape} (use eval())")
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        y, cache = F.batch_norm_forward(
            x, self.params.get("gamma"), self.params.get("beta"), rm, rv, training, self.eps, check_finite=False
        )
        if training:
            # running statistics as PyTorch: the unbiased batch variance, exponential average with weight momentum
            m = x.dtype.type(self.momentum)
            unbiased = cache.var * x.dtype.type(cache.count / (cache.count - 1))
            rm *= 1 - m
            rm += m * cache.mean
            rv *= 1 - m
            rv += m * unbiased
        self._cache = cache
        return y

    def get_config(self):
        return {
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
            "affine": self.affine,
            "dtype": np.dtype(self.dtype).name,
        }


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of ``x (N, C)`` or ``(N, C, L)`` per channel C, as ``torch.nn.BatchNorm1d``.

    Training: the batch's mean and biased variance normalise x; the running
    statistics (``buffers["running_mean"]`` zeros, ``buffers["running_var"]``
    ones at first) move by ``momentum`` towards the batch mean and *unbiased*
    variance.  Evaluation (``eval()``): the running statistics normalise x and
    are left alone.  Parameters ``gamma`` (ones) and ``beta`` (zeros) when
    ``affine``.  The buffers are saved and loaded with the model.
    """

    ndims = (2, 3)


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of ``x (N, C, H, W)`` per channel C, as ``torch.nn.BatchNorm2d`` (see BatchNorm1D)."""

    ndims = (4,)
