"""The Layer protocol every fastgrad layer follows (micrograd-small on purpose).

A layer owns

* ``params``: dict name -> ndarray, the trainable tensors;
* ``grads``: dict with the same keys, shapes and dtype, **accumulated** by
  ``backward`` (``+=``) and cleared by ``zero_grad``;
* the cache of its last forward pass, which ``backward`` reads.

``layer(x)`` is ``layer.forward(x)``; ``dx = layer.backward(dy)`` returns the
gradient with respect to the input.  ``get_config()`` returns the JSON-able
constructor arguments, so ``type(layer)(**layer.get_config())`` builds the same
architecture (that is how :mod:`fastgrad.io` saves models without pickle).
"""

from __future__ import annotations

import numpy as np

from .._checks import as_array, check_alloc, float_dtype
from ..state import copy_state, load_state


class Layer:
    """Base class: params/grads dicts, zero_grad, config, input conversion."""

    #: every concrete layer class by name, for loading saved architectures
    registry: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Layer.registry[cls.__name__] = cls

    def __init__(self, dtype=np.float32):
        self.dtype = float_dtype(dtype, "dtype", f"{type(self).__name__}")
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self._cache = None

    # -- protocol -----------------------------------------------------------
    def __call__(self, x, *args, **kwargs):
        return self.forward(x, *args, **kwargs)

    def forward(self, x):  # pragma: no cover - every subclass overrides
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy):  # pragma: no cover - every subclass overrides
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def get_config(self) -> dict:
        """Constructor arguments as JSON-able values (subclasses extend)."""
        return {"dtype": np.dtype(self.dtype).name} if self.params else {}

    def output_shape(self, input_shape: tuple) -> tuple:
        """Shape of one sample's output for one sample's input shape (no batch axis)."""
        return tuple(input_shape)

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # -- training state ---------------------------------------------------------
    @property
    def trainable(self) -> bool:
        """``False`` freezes the layer: optimizers skip its parameters and
        ``Sequential.backward`` leaves its ``grads`` at zero (the gradient still
        reaches the layers before it)."""
        return self.__dict__.get("_trainable", True)

    @trainable.setter
    def trainable(self, value) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}.trainable must be True or False, got {type(value).__name__}")
        self.__dict__["_trainable"] = bool(value)

    def state_dict(self) -> dict:
        """Copies of the parameters, ``{name: ndarray}`` with the names of ``params``."""
        return copy_state(self)

    def load_state_dict(self, state, strict: bool = True):
        """Copy ``state`` (a :meth:`state_dict`, or a model to copy from) into the parameters.

        Everything is checked before anything is written; see
        :func:`fastgrad.state.load_state`.  Returns ``(missing_keys, unexpected_keys)``.
        """
        return load_state(self, state, strict)

    # -- helpers for subclasses -----------------------------------------------
    def _where(self, method: str) -> str:
        return f"{type(self).__name__}.{method}"

    def _add_param(self, name: str, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value, dtype=self.dtype)
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def _input(self, x, method: str = "forward", name: str = "x", ndim=None) -> np.ndarray:
        """x as a C-contiguous array in the layer's dtype (float64 -> float32 is converted).

        Layers without parameters keep the input's own float dtype.  NaN/Inf in x
        raises here under the check_finite policy; the layer then calls the
        functional API with ``check_finite=False``, so each tensor is scanned
        once and the layer's own parameters are not rescanned on every call
        (a NaN parameter propagates to the output, where the loss refuses it).
        """
        dtype = self.dtype if self.params else None
        return as_array(x, name, self._where(method), ndim=ndim, dtype=dtype)

    def _saved(self, method: str = "backward"):
        if self._cache is None:
            raise ValueError(f"{self._where(method)}: called before forward (no saved forward pass)")
        return self._cache

    def _grad_input(self, dy, shape: tuple, dtype, method: str = "backward", name: str = "dy") -> np.ndarray:
        """Validate an upstream gradient against the shape of the forward output."""
        dy = as_array(dy, name, self._where(method), dtype=dtype)
        if dy.shape != tuple(shape):
            raise ValueError(f"{self._where(method)}: {name} must have shape {tuple(shape)} (the forward output), got {dy.shape}")
        return dy


def check_param_sizes(where: str, dtype, shapes: dict) -> None:
    """Refuse parameter shapes whose arrays (and their gradients) could not be allocated.

    Runs before anything is drawn, with the sizes in Python ints:
    ``Dense(10**6, 10**6)`` raises a ValueError naming W, its shape, the dtype and
    the bytes instead of numpy's MemoryError halfway through the constructor.
    """
    check_alloc(where, dtype, list(shapes.items()), "with their gradients", copies=2)


def uniform_init(rng: np.random.Generator, shape: tuple, fan_in: int, dtype) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Linear, Conv and LSTM.

    Drawn in ``dtype`` itself (a float32 layer never holds a float64 copy of its weights).
    """
    bound = 1.0 / np.sqrt(max(fan_in, 1))
    out = rng.random(shape, dtype=np.dtype(dtype).type)  # [0, 1)
    out *= out.dtype.type(2.0 * bound)
    out -= out.dtype.type(bound)
    return out
