"""Dense (fully connected) layer: y_k = sigma(b_k + sum_j w_kj x_j)."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import activation_code, positive_int
from ..random import init_generator
from .base import Layer, check_param_sizes, uniform_init


class Dense(Layer):
    """Fully connected layer over a batch, ``x (N, in_features) -> y (N, out_features)``.

    N-D input ``(N, ..., in_features)`` works as in ``torch.nn.Linear``: the layer
    acts on the last axis at every position of the others (``(T, N, H)`` -> ``(T, N, out)``).

    Parameters ``W`` (out_features, in_features) and ``b`` (out_features,), the
    cheat sheet's ``w_kj`` and ``b_k``.  Initialisation (seedable with ``seed``)
    is PyTorch's default for ``nn.Linear``: W and b drawn from
    U(-1/sqrt(in_features), 1/sqrt(in_features)), i.e. scaled by the fan-in.

    float64 input to a float32 layer (and float32 to float64) is converted to
    the layer's dtype.  ``backward`` accumulates into ``grads`` and returns dx.
    """

    def __init__(self, in_features, out_features, activation="identity", bias=True, dtype=np.float32, seed=None):
        super().__init__(dtype)
        where = "Dense"
        self.in_features = positive_int(in_features, "in_features", where)
        self.out_features = positive_int(out_features, "out_features", where)
        activation_code(activation, where)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{where}: bias must be True or False, got {type(bias).__name__}")
        self.activation = activation
        self.bias = bool(bias)
        shapes = {"W": (self.out_features, self.in_features)}
        if self.bias:
            shapes["b"] = (self.out_features,)
        check_param_sizes(where, self.dtype, shapes)
        rng = init_generator(seed, where)  # seed=None: the default generator (fg.manual_seed)
        self.add_param("W", uniform_init(rng, (self.out_features, self.in_features), self.in_features, self.dtype))
        if self.bias:
            self.add_param("b", uniform_init(rng, (self.out_features,), self.in_features, self.dtype))

    def forward(self, x):
        # N-D input, as torch.nn.Linear: the layer acts on the last axis, the leading axes
        # fold into the batch of the 2-D kernel ((N, T, n) -> (N*T, n), a view) and unfold after
        where = self._where("forward")
        x = self._input(x)
        if x.ndim < 2:
            raise ValueError(f"{where}: x must be 2-D or more (N, ..., in_features), got shape {x.shape}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{where}: x.shape[{x.ndim - 1}]={x.shape[-1]} does not match in_features={self.in_features}")
        lead = x.shape[:-1]
        # x was checked above; the parameters are the layer's own (see Layer._input)
        y, cache = F.dense_forward(
            x.reshape(-1, self.in_features), self.params["W"], self.params.get("b"), self.activation, check_finite=False
        )
        self._cache = (cache, lead)
        return y.reshape(lead + (self.out_features,))

    def backward(self, dy):
        cache, lead = self._saved()
        dy = self._grad_input(dy, lead + (self.out_features,), self.dtype)
        dx = np.zeros_like(cache.x)
        # the kernel accumulates straight into the layer's grads
        F.dense_backward_into((dx, self.grads["W"], self.grads.get("b")), dy.reshape(cache.z.shape), cache, check_finite=False)
        return dx.reshape(lead + (self.in_features,))

    def get_config(self):
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "activation": self.activation,
            "bias": self.bias,
            "dtype": np.dtype(self.dtype).name,
        }

    def output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.out_features,)
