"""fastgrad: the cheat sheet "Neural Network Gradients" as fast numba kernels.

Dense, convolutional and LSTM layers and softmax, each forward pass and gradient
written in index form and compiled with numba, plus a small training layer
(Sequential, losses, optimizers, save/load) and a gradient checker.

    import fastgrad as fg
    model = fg.Sequential(fg.Dense(64, 128, "relu"), fg.Dense(128, 10))
    model.fit(x, y, fg.CrossEntropyLoss(), fg.Adam(model, 1e-3), epochs=10)

Training is reproducible end to end: ``fg.manual_seed(s)`` seeds initialisation,
dropout and shuffling; ``fg.save_checkpoint`` / ``fg.load_checkpoint`` with
``fit(..., initial_epoch=k)`` resume a run bitwise; LR schedules and early
stopping are ``fit`` callbacks.
"""

__version__ = "0.1.0"

from . import functional
from ._checks import get_check_finite, set_check_finite
from .callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import get_num_threads, release_memory, set_num_threads, show_config, warmup
from .gradcheck import GradcheckError, GradcheckReport, gradcheck, gradcheck_fn
from .io import ModelFileError, load, load_weights, save
from .kernels.activations import ACTIVATIONS
from .interop import from_torch, to_torch
from .layers import (
    Activation,
    AvgPool1D,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    Layer,
    LayerNorm,
    LogSoftmax,
    LSTM,
    MaxPool1D,
    MaxPool2D,
    Softmax,
)
from .losses import CrossEntropyLoss, MSELoss
from .model import Sequential
from .optim import SGD, Adam, AdamW, Optimizer, clip_grad_norm
from .plotting import plot_history
from .random import default_generator, get_rng_state, initial_seed, manual_seed, set_rng_state
from .schedules import CosineAnnealingLR, ExponentialLR, LinearLR, LRScheduler, MultiStepLR, ReduceLROnPlateau, StepLR

__all__ = [
    "__version__",
    "functional",
    "ACTIVATIONS",
    "Layer",
    "Dense",
    "Activation",
    "Softmax",
    "LogSoftmax",
    "Flatten",
    "Conv1D",
    "Conv2D",
    "MaxPool1D",
    "MaxPool2D",
    "AvgPool1D",
    "AvgPool2D",
    "LSTM",
    "Embedding",
    "Dropout",
    "LayerNorm",
    "BatchNorm1D",
    "BatchNorm2D",
    "from_torch",
    "to_torch",
    "Sequential",
    "MSELoss",
    "CrossEntropyLoss",
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "clip_grad_norm",
    "manual_seed",
    "initial_seed",
    "default_generator",
    "get_rng_state",
    "set_rng_state",
    "LRScheduler",
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "ReduceLROnPlateau",
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "CSVLogger",
    "save_checkpoint",
    "load_checkpoint",
    "Checkpoint",
    "plot_history",
    "save",
    "load",
    "load_weights",
    "ModelFileError",
    "gradcheck",
    "gradcheck_fn",
    "GradcheckError",
    "GradcheckReport",
    "set_num_threads",
    "release_memory",
    "get_num_threads",
    "show_config",
    "warmup",
    "set_check_finite",
    "get_check_finite",
]
