"""Parameter-free layers: Activation, Softmax, LogSoftmax, Flatten."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import activation_code
from .base import Layer


class Activation(Layer):
    """Element-wise ``y = sigma(x)`` for any input shape; ``name`` from ``fastgrad.ACTIVATIONS``."""

    def __init__(self, name):
        super().__init__()
        activation_code(name, "Activation", "name")
        self.name = name

    def forward(self, x):
        x = self._input(x)
        y, self._cache = F.activation_forward(x, self.name, check_finite=False)
        return y

    def backward(self, dy):
        cache = self._saved()
        dy = self._grad_input(dy, cache[0].shape, cache[0].dtype)
        return F.activation_backward(dy, cache, check_finite=False)

    def get_config(self):
        return {"name": self.name}


class _AxisLayer(Layer):
    """A row-wise op along ``axis`` whose backward needs only its own output.

    Subclasses name the functional pair in ``_forward`` / ``_backward``.
    """

    def __init__(self, axis=-1):
        super().__init__()
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}: axis must be an int, got {type(axis).__name__}")
        self.axis = int(axis)

    def forward(self, x):
        x = self._input(x)
        y = self._forward(x, self.axis, check_finite=False)
        self._cache = y
        return y

    def backward(self, dy):
        y = self._saved()
        dy = self._grad_input(dy, y.shape, y.dtype)
        return self._backward(dy, y, self.axis, check_finite=False)

    def get_config(self):
        return {"axis": self.axis}


class Softmax(_AxisLayer):
    """``y = softmax(x)`` along ``axis``; backward is the O(n) JVP from the saved output."""

    _forward = staticmethod(F.softmax)
    _backward = staticmethod(F.softmax_backward)


class LogSoftmax(_AxisLayer):
    """``y = log_softmax(x)`` along ``axis``; backward from the saved output."""

    _forward = staticmethod(F.log_softmax)
    _backward = staticmethod(F.log_softmax_backward)


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...); backward reshapes back."""

    def forward(self, x):
        x = self._input(x, ndim=tuple(range(1, 8)))
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        shape = self._saved()
        dy = self._grad_input(dy, (shape[0], int(np.prod(shape[1:], dtype=np.int64))), None)
        return dy.reshape(shape)

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape, dtype=np.int64)),)
