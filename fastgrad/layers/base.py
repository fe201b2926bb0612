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

Layers made of layers: an attribute that is a Layer, or a list/tuple of Layers
(or a dict of them with string keys), is a **child** (as torch registers
submodules); ``Sequential``'s children are its layers, named "0", "1", ....
The tree of children is the one notion of what a model contains: ``params``,
``grads`` and ``buffers`` of a layer with children hold its own arrays and
then each child's under dotted names (``"inner.W"``, in a Sequential
``"0.inner.W"``), and optimizers, ``zero_grad``, ``train()``/``eval()``,
``gradcheck``, state dicts, ``fg.save``/``fg.load`` and checkpoints all walk
it (:func:`walk`).  A layer reachable twice (under two names) or a cycle is
refused with a ValueError naming both paths.

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


#: where a layer keeps its own arrays (the ``params`` / ``grads`` / ``buffers`` attributes read them)
_OWN_DICTS = ("_params", "_grads", "_buffers")


class _Arrays:
    """``layer.params`` (or ``grads``, ``buffers``): the layer's own dict, or the whole tree's.

    A layer without children (every built-in leaf) gets its own dict itself,
    so ``self.params["W"]`` costs one dict lookup.  A layer with children gets
    a :class:`TreeDict` of its own arrays followed by every child's under
    dotted names.  Assigning ``layer.params = {...}`` replaces the own dict.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.slot = "_" + kind

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        own = obj.__dict__.get(self.slot)
        if own is None:
            raise AttributeError(
                f"{type(obj).__name__} has no {self.kind}: call super().__init__(dtype) at the start of {type(obj).__name__}.__init__"
            )
        if type(obj)._leaf or not obj.named_children():
            return own
        return tree_arrays(obj, self.kind)

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


class TreeDict(dict):
    """The arrays of a layer and its children by dotted name; an assignment lands in the owning layer's dict.

    ``block.params["inner.W"] = w`` is ``block.inner.params["W"] = w``: nothing
    written through the merged view is lost.  New names must be registered with
    ``add_param`` / ``add_buffer`` on the layer that owns them.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.owners: dict[str, tuple] = {}

    def __setitem__(self, key, value):
        owner = self.owners.get(key)
        if owner is None:
            raise KeyError(
                f"{key!r} is not a registered {self.kind[:-1]} of this layer or its children; register new ones with "
                f"add_param / add_buffer on the layer that owns them"
            )
        own, name = owner
        own[name] = value
        super().__setitem__(key, value)


def walk(layer, skip_frozen: bool = False):
    """``[(path, layer)]`` for ``layer`` (path "") and every layer in its tree, depth first, parents before children.

    Paths are dotted child names (``"0"``, ``"0.inner"``).  ``skip_frozen``
    leaves out every layer with ``trainable = False`` and everything inside it.
    A layer reachable under two paths, or a cycle, raises ValueError naming both.
    """
    out = []
    seen: dict[int, str] = {}

    def visit(path, node, ancestors):
        if skip_frozen and not node.trainable:
            return
        if id(node) in ancestors:
            raise ValueError(
                f"{type(layer).__name__}: layer tree has a cycle: {path!r} is {seen[id(node)] or 'the model itself'!r}"
                f" ({type(node).__name__}) or holds it; a layer cannot contain itself"[:295]
            )
        if id(node) in seen:
            raise ValueError(
                f"{type(layer).__name__}: the same {type(node).__name__} is registered twice, as {seen[id(node)] or 'the model'!r}"
                f" and as {path!r}; a layer can be a child once (to share weights, write one layer that uses them twice)"[:295]
            )
        seen[id(node)] = path
        out.append((path, node))
        if type(node)._leaf:
            return
        ancestors.add(id(node))
        for name, child in node.named_children():
            visit(f"{path}.{name}" if path else name, child, ancestors)
        ancestors.discard(id(node))

    visit("", layer, set())
    return out


def own_arrays(layer, kind: str) -> dict:
    """The arrays ``layer`` registered itself (``kind``: "params", "grads" or "buffers"), without its children's."""
    own = layer.__dict__.get("_" + kind)
    return own if isinstance(own, dict) else {}


def tree_arrays(layer, kind: str, skip_frozen: bool = False) -> TreeDict:
    """``layer``'s own arrays of ``kind`` and then every child's, under dotted names (see :func:`walk`)."""
    out = TreeDict(kind)
    for path, node in walk(layer, skip_frozen):
        own = own_arrays(node, kind)
        for name, arr in own.items():
            key = f"{path}.{name}" if path else name
            dict.__setitem__(out, key, arr)
            out.owners[key] = (own, name)
    return out


class Layer:
    """Base class: params/grads dicts, zero_grad, config, input conversion."""

    #: the built-in layer classes by their short name, as model files name them
    #: (user classes are named ``module:qualname`` instead, see :func:`layer_type`)
    registry: dict[str, type] = {}

    #: train/eval mode (``train()`` / ``eval()`` set it on the instance)
    training = True

    #: True for layers whose input is integer indices (Embedding), not floats
    takes_indices = False

    #: the arrays of this layer and its children (see :class:`_Arrays`)
    params = _Arrays("params")
    grads = _Arrays("grads")
    buffers = _Arrays("buffers")

    #: True on built-in layers that never hold child layers: ``params`` is then the layer's
    #: own dict with no walk (a user subclass is never a leaf, it may add children)
    _leaf = False
    #: True on built-in containers (Sequential), whose children are not found by attribute
    _container = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._leaf = is_builtin(cls) and not cls._container
        if not is_builtin(cls) or cls.__name__.startswith("_"):
            return  # user classes and private bases (_ConvND, _Pool, ...) are not registered
        known = Layer.registry.get(cls.__name__)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"Layer: two built-in layers named {cls.__name__} ({known.__module__} and {cls.__module__})")
        Layer.registry[cls.__name__] = cls

    def __init__(self, dtype=np.float32):
        self.dtype = float_dtype(dtype, "dtype", f"{type(self).__name__}")
        self._params: dict[str, np.ndarray] = {}  # own arrays; self.params adds the children's
        self._grads: dict[str, np.ndarray] = {}
        self._buffers: dict[str, np.ndarray] = {}
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

    def backward_params(self, dy) -> None:
        """The backward pass without dL/dx: accumulate the parameter gradients only; returns None.

        A model calls it on its lowest trained layer, whose input needs no
        gradient.  The default runs ``backward`` and drops dx; a layer that can
        skip computing dx overrides it (Dense saves a third of its backward).
        """
        self.backward(dy)

    def zero_grad(self) -> None:
        """Fill every gradient with 0: this layer's and its children's."""
        for g in self.grads.values():
            g.fill(0)

    def named_children(self) -> list:
        """``[(name, layer)]``: the layers this one holds directly, in attribute order.

        An attribute that is a Layer is named by the attribute (``"inner"``), a
        list or tuple of Layers by attribute and index (``"blocks.0"``), a dict
        of Layers by attribute and key (``"heads.a"``).  Containers such as
        Sequential override this (their layers are ``"0"``, ``"1"``, ...).
        """
        if type(self)._leaf:
            return []
        out = []
        for attr, value in vars(self).items():
            if isinstance(value, Layer):
                out.append((attr, value))
            elif isinstance(value, (list, tuple)):
                out.extend((f"{attr}.{i}", v) for i, v in enumerate(value) if isinstance(v, Layer))
            elif isinstance(value, dict) and attr not in _OWN_DICTS:
                out.extend((f"{attr}.{k}", v) for k, v in value.items() if isinstance(v, Layer) and isinstance(k, str))
        return out

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
        if not isinstance(vars(self).get("_params"), dict) or not isinstance(vars(self).get("_grads"), dict):
            raise TypeError(f"{where}: call super().__init__(dtype) at the start of {type(self).__name__}.__init__")
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{where}: name must be a non-empty string without '.', got {name!r}"[:290])
        own = vars(self)
        if name in own["_params"]:
            raise ValueError(f"{where}: a parameter named {name!r} is already registered")
        value = as_array(value, name, where, dtype=self.dtype, check_finite=False)
        own["_params"][name] = value
        own["_grads"][name] = np.zeros_like(value)

    def add_buffer(self, name: str, value) -> None:
        """Register a saved, non-trainable array: ``buffers[name]`` = value in the layer's dtype (no gradient).

        Buffers are written by the layer itself (BatchNorm's running statistics),
        never by an optimizer, and are saved and loaded with the model.
        """
        where = self._where("add_buffer")
        own = vars(self)
        if not isinstance(own.get("_buffers"), dict):
            raise TypeError(f"{where}: call super().__init__(dtype) at the start of {type(self).__name__}.__init__")
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{where}: name must be a non-empty string without '.', got {name!r}"[:290])
        if name in own["_buffers"] or name in own.get("_params", {}):
            raise ValueError(f"{where}: {name!r} is already registered")
        own["_buffers"][name] = as_array(value, name, where, dtype=self.dtype, check_finite=False)

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
    """``obj`` and every layer in its tree (Sequential's layers, a user block's children), parents first."""
    return [layer for _, layer in walk(obj)]


def zero_frozen_grads(layer) -> None:
    """Zero the gradients of every frozen layer inside ``layer`` (a frozen child of a trainable block)."""
    if type(layer)._leaf:
        return
    for _, node in walk(layer):
        if not node.trainable:
            for g in tree_arrays(node, "grads").values():
                g.fill(0)


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
