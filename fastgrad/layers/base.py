"""The Layer protocol every fastgrad layer follows (micrograd-small on purpose).

A layer owns

* ``params``: dict name -> ndarray, the trainable tensors;
* ``grads``: dict with the same keys, shapes and dtype, **accumulated** by
  ``backward`` (``+=``) and cleared by ``zero_grad``;
* ``buffers``: dict name -> ndarray of state that is not trained but saved
  with the model (BatchNorm's running statistics), registered with ``add_buffer``;
* ``training``: True (the default) or False, set by ``train()`` / ``eval()`` on
  the layer and every layer it holds; Dropout and BatchNorm behave differently;
* the cache of its last forward pass, which ``backward`` reads.

``layer(x)`` is ``layer.forward(x)``; ``dx = layer.backward(dy)`` returns the
gradient with respect to the input.  ``get_config()`` returns the JSON-able
constructor arguments, so ``type(layer)(**layer.get_config())`` builds the same
architecture (that is how :mod:`fastgrad.io` saves models without pickle).

Writing your own layer (``docs/custom-layers.md`` walks through one)::

    class Scale(fg.Layer):                     # y_sk = g_k x_sk

        def __init__(self, n, dtype=np.float32):
            super().__init__(dtype)            # params, grads, dtype
            self.n = n
            self.add_param("g", np.ones(n))    # params["g"] in the layer's dtype, grads["g"] zeros

        def forward(self, x):
            x = np.asarray(x, dtype=self.dtype)
            self.x = x                         # what backward needs
            return x * self.params["g"]

        def backward(self, dy):
            self.grads["g"] += np.sum(dy * self.x, axis=0)   # accumulate, never assign
            return dy * self.params["g"]                     # dL/dx

        def get_config(self):                  # optional: needed by fg.save / fg.load
            return {**super().get_config(), "n": self.n}

Such a layer trains inside ``Sequential``, passes ``fg.gradcheck`` and saves
and loads.  Built-in layers are named in model files by their class name
(``"Dense"``); every other class by ``"module:qualname"`` (``"mylayers:Scale"``),
so a user class named ``Dense`` never replaces :class:`fastgrad.Dense`.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .._checks import as_array, check_alloc, float_dtype
from ..state import copy_state, load_state


class Layer:
    """Base class: params/grads dicts, zero_grad, config, input conversion."""

    #: the built-in layer classes by their short name, as model files name them
    #: (user classes are named ``module:qualname`` instead, see :func:`layer_type`)
    registry: dict[str, type] = {}

    #: train/eval mode (``train()`` / ``eval()`` set it on the instance)
    training = True

    #: True for layers whose input is integer indices (Embedding), not floats
    takes_indices = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not is_builtin(cls) or cls.__name__.startswith("_"):
            return  # user classes and private bases (_ConvND, _Pool, ...) are not registered
        known = Layer.registry.get(cls.__name__)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"Layer: two built-in layers named {cls.__name__} ({known.__module__} and {cls.__module__})")
        Layer.registry[cls.__name__] = cls

    def __init__(self, dtype=np.float32):
        self.dtype = float_dtype(dtype, "dtype", f"{type(self).__name__}")
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self._cache = None

    # -- protocol -----------------------------------------------------------
    def __call__(self, x, *args, **kwargs):
        return self.forward(x, *args, **kwargs)

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward: a Layer subclass must define forward(x) -> y")

    def backward(self, dy):
        raise NotImplementedError(
            f"{type(self).__name__}.backward: a Layer subclass must define backward(dy) -> dL/dx (accumulating into self.grads)"
        )

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def train(self, mode: bool = True):
        """Set ``training`` = mode on this layer and on every layer it holds; returns self (as PyTorch)."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"{self._where('train')}: mode must be True or False, got {type(mode).__name__}")
        for layer in sublayers(self):
            layer.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: ``train(False)`` (Dropout is the identity, BatchNorm uses its running statistics)."""
        return self.train(False)

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

    def add_param(self, name: str, value) -> None:
        """Register a trainable parameter: ``params[name]`` = value in the layer's dtype, ``grads[name]`` = zeros.

        The layer takes the array as its parameter, like ``torch.nn.Parameter``:
        it is converted to a C-contiguous array of ``self.dtype`` (a copy only
        when that needs one, so a large initial value is never held twice) and
        trained in place from then on; read it as ``self.params[name]``.  Float
        arrays only (ints are refused, never truncated).  Names are unique within
        the layer and contain no "." (Sequential names its parameters
        ``"<index>.<name>"``).
        """
        where = self._where("add_param")
        if not isinstance(vars(self).get("params"), dict) or not isinstance(vars(self).get("grads"), dict):
            raise TypeError(f"{where}: call super().__init__(dtype) at the start of {type(self).__name__}.__init__")
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{where}: name must be a non-empty string without '.', got {name!r}"[:290])
        if name in self.params:
            raise ValueError(f"{where}: a parameter named {name!r} is already registered")
        value = as_array(value, name, where, dtype=self.dtype, check_finite=False)
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def add_buffer(self, name: str, value) -> None:
        """Register a saved, non-trainable array: ``buffers[name]`` = value in the layer's dtype (no gradient).

        Buffers are written by the layer itself (BatchNorm's running statistics),
        never by an optimizer, and are saved and loaded with the model.
        """
        where = self._where("add_buffer")
        if not isinstance(vars(self).get("buffers"), dict):
            raise TypeError(f"{where}: call super().__init__(dtype) at the start of {type(self).__name__}.__init__")
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{where}: name must be a non-empty string without '.', got {name!r}"[:290])
        if name in self.buffers or name in self.params:
            raise ValueError(f"{where}: {name!r} is already registered")
        self.buffers[name] = as_array(value, name, where, dtype=self.dtype, check_finite=False)

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


def sublayers(obj: Layer) -> list:
    """``obj`` and every Layer reachable through its attributes (Sequential.layers, a user block's children), once each."""
    found = {}
    stack = [obj]
    while stack:
        layer = stack.pop()
        if id(layer) in found:
            continue
        found[id(layer)] = layer
        for value in vars(layer).values():
            if isinstance(value, Layer):
                stack.append(value)
            elif isinstance(value, (list, tuple)):
                stack.extend(v for v in value if isinstance(v, Layer))
            elif isinstance(value, dict):
                stack.extend(v for v in value.values() if isinstance(v, Layer))
    return list(found.values())


@contextmanager
def evaluating(model: Layer):
    """Run the block with ``model`` and its sub-layers in evaluation mode, then restore each layer's own mode."""
    modes = [(layer, vars(layer).get("training")) for layer in sublayers(model)]
    model.eval()
    try:
        yield model
    finally:
        for layer, mode in modes:
            if mode is None:
                vars(layer).pop("training", None)  # back to the class default
            else:
                layer.training = mode


def takes_indices(model: Layer) -> bool:
    """True when ``model`` reads integer indices: an index layer (Embedding) or a Sequential starting with one."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, list):
        return bool(layers) and takes_indices(layers[0])
    return bool(getattr(model, "takes_indices", False))


def is_builtin(cls: type) -> bool:
    """True for classes defined inside the fastgrad package."""
    return cls.__module__ == "fastgrad" or cls.__module__.startswith("fastgrad.")


def layer_type(cls: type) -> str:
    """The name model files give a layer class.

    Built-in layers keep their short name (``"Dense"``, ``"Sequential"``), as
    in every file written so far; any other class is ``"module:qualname"``
    (``"mylayers:RMSNorm"``), so it can never be confused with a built-in.
    """
    if Layer.registry.get(cls.__name__) is cls:
        return cls.__name__
    return f"{cls.__module__}:{cls.__qualname__}"


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
