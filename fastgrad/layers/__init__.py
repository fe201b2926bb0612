"""The object layer: one module per layer family, all following layers.base.Layer."""

from .base import Layer
from .core import Activation, Flatten, LogSoftmax, Softmax
from .conv import Conv1D, Conv2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding
from .lstm import LSTM
from .norm import BatchNorm1D, BatchNorm2D, LayerNorm
from .pool import AvgPool1D, AvgPool2D, MaxPool1D, MaxPool2D

__all__ = [
    "Layer", "Dense", "Activation", "Softmax", "LogSoftmax", "Flatten",
    "Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "LSTM",
    "Embedding", "Dropout", "LayerNorm", "BatchNorm1D", "BatchNorm2D",
]
