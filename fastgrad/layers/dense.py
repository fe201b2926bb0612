"""Dense (fully connected) layer: y_k = sigma(b_k + sum_j w_kj x_j)."""

from __future__ import annotations

import numpy as np

from .. import _checks
from .. import functional as F
from .._checks import activation_code, is_plain, positive_int
from .._workspace import recycled_zeros
from ..functional import dense as FD
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

    #: what the last validated forward / backward saw (see forward); None: validate
    _seen = None
    _seen_grads = None

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
        # the remembered fast path: a plain 2-D array of the shape last validated, with the same
        # parameter arrays, needs no validation again (a training step calls it like that every time)
        W = self._params["W"]
        b = self._params.get("b")
        seen = self._seen
        if seen is not None and seen[1] is W and seen[2] is b and seen[4] is self.activation and is_plain(x, seen[0], W.dtype):
            if _checks.get_check_finite():
                _checks.check_finite_values(x, "x", "Dense.forward")
            y, cache = FD.forward_checked(x, W, b, self.activation, seen[3])
            self._cache = (cache, seen[0][:-1])
            return y
        return self._forward(x)

    def _forward(self, x):
        # N-D input, as torch.nn.Linear: the layer acts on the last axis, the leading axes
        # fold into the batch of the 2-D kernel ((N, T, n) -> (N*T, n), a view) and unfold after
        where = self._where("forward")
        x = self._input(x)
        if x.ndim < 2:
            raise ValueError(f"{where}: x must be 2-D or more (N, ..., in_features), got shape {x.shape}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{where}: x.shape[{x.ndim - 1}]={x.shape[-1]} does not match in_features={self.in_features}")
        lead = x.shape[:-1]
        W = self.params["W"]
        b = self.params.get("b")
        # x was checked above; the parameters are the layer's own (see Layer._input)
        y, cache = F.dense_forward(x.reshape(-1, self.in_features), W, b, self.activation, check_finite=False)
        self._cache = (cache, lead)
        # remembered for the fast path: this shape passed every check with these parameters
        self._seen = (x.shape, W, b, activation_code(self.activation, where), self.activation) if x.ndim == 2 else None
        return y.reshape(lead + (self.out_features,))

    def backward(self, dy):
        return self._backward(dy, True)

    def backward_params(self, dy) -> None:
        """``backward`` without dL/dx: the parameter gradients only (a model's first layer)."""
        self._backward(dy, False)

    def _backward(self, dy, need_dx):
        cache, lead = self._saved()
        gW = self._grads["W"]
        gb = self._grads.get("b")
        seen = self._seen_grads
        if (
            seen is not None
            and seen[1] is gW
            and seen[2] is gb
            and seen[3] is self.activation
            and cache.z.shape == seen[0]
            and is_plain(dy, seen[0], gW.dtype)
        ):
            # as the forward's fast path: everything but dy's values was checked for this shape
            if _checks.get_check_finite():
                _checks.check_finite_values(dy, "dy", "Dense.backward")
            dx = recycled_zeros(cache.x.shape, cache.x.dtype) if need_dx else None
            FD.backward_checked(dx, gW, gb, dy, cache.x, cache.W, cache.z, seen[4])
            return None if dx is None else dx.reshape(lead + (self.in_features,))
        dy = self._grad_input(dy, lead + (self.out_features,), self.dtype)
        dx = recycled_zeros(cache.x.shape, cache.x.dtype) if need_dx else None
        # the kernel accumulates straight into the layer's grads
        F.dense_backward_into((dx, self.grads["W"], self.grads.get("b")), dy.reshape(cache.z.shape), cache, check_finite=False)
        if not lead[1:]:
            self._seen_grads = (dy.shape, gW, gb, self.activation, activation_code(self.activation, "Dense.backward"))
        return None if dx is None else dx.reshape(lead + (self.in_features,))

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
