"""The object layer: one module per layer family, all following layers.base.Layer."""

from .base import Layer
from .core import Activation, Flatten, LogSoftmax, Softmax
from .dense import Dense

__all__ = ["Layer", "Dense", "Activation", "Softmax", "LogSoftmax", "Flatten"]
