"""A Sequential of Dense layers trained through one compiled call per half step.

``Sequential.train_step`` and ``fit`` run a model made only of built-in
``Dense`` layers, with ``CrossEntropyLoss`` on integer labels, through
:mod:`fastgrad.kernels.stack`: the same kernels on the same arrays as the
layers, called from compiled code instead of from Python (the layers' own
arrays train: ``layer.params["W"]`` is the array the kernels update; the
optimizer step is the optimizer's own).  Results are bitwise those of the
layer-by-layer path; the checks are the same (the same errors, raised by the
same functions), run once per (shapes, dtype, arrays) and remembered as a
:class:`DenseStack`.  Anything else (another layer, a frozen layer, a layer
whose methods were replaced on the instance, probabilities as targets,
products large enough for the parallel kernels) takes the layer-by-layer path.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from ._jit import CORE_SERIAL_BELOW, exact
from ._workspace import owned
from .functional.common import EMPTY1, EMPTY2
from .functional.dense import DenseCache
from .functional.softmax import labels_or_none
from .kernels import products
from .kernels import stack as kstack
from .layers.dense import Dense
from .losses import CrossEntropyLoss

_OVERRIDES = ("forward", "backward", "backward_params")


def eligible(model, x, loss) -> bool:
    """True when ``model`` (a Sequential) can train through a DenseStack for this input and loss."""
    if type(loss) is not CrossEntropyLoss or not model.trainable or not model.layers:
        return False
    # x exactly as the kernels take it: anything the layers would convert (another dtype, another
    # layout, a read-only array) takes the layer-by-layer path, which converts it
    if type(x) is not np.ndarray or x.ndim != 2 or x.shape[0] == 0 or not _checks.is_plain(x, x.shape, model.layers[0].dtype):
        return False
    n = x.shape[1]
    for layer in model.layers:
        if type(layer) is not Dense or not layer.trainable or any(k in layer.__dict__ for k in _OVERRIDES):
            return False
        if layer.dtype != x.dtype:
            return False
        if layer.in_features != n or x.shape[0] * layer.in_features * layer.out_features >= CORE_SERIAL_BELOW:
            return False
        n = layer.out_features
    return True


def _example_stack(model) -> "DenseStack":
    """A DenseStack of ``model`` for a batch of one: the compiled step depends on types, not on sizes."""
    return DenseStack(model, (1, model.layers[0].in_features), model.layers[0].dtype)


def compile_for(model) -> None:
    """Compile (or load from the kernel cache) the fused step of ``model``, a Sequential of Dense layers.

    For warming up ahead of training (``fastgrad.config.CompileAhead``); the model is not changed.
    """
    for fn, args in _example_stack(model).example_calls():
        exact(fn, args)


def compiled_for(model) -> bool:
    """True when this process holds the compiled fused step of ``model`` (see :func:`compile_for`)."""
    for fn, args in _example_stack(model).example_calls():
        overloads = getattr(fn, "overloads", None)
        if overloads is not None and tuple(fn.typeof_pyval(a) for a in args) not in overloads:
            return False
    return True


class DenseStack:
    """The fused step of one model for one (x.shape, dtype): the layers' arrays and every buffer, made once."""

    def __init__(self, model, x_shape: tuple, dtype):
        self.layers = tuple(model.layers)
        self.x_shape = x_shape
        self.dtype = np.dtype(dtype)
        self.arrays = self._arrays()
        N = x_shape[0]
        z, y, dz, dx, fwd, dxs, dws = [], [], [], [], [], [], []
        for i, layer in enumerate(self.layers):
            n, m = layer.in_features, layer.out_features
            code = _checks.activation_code(layer.activation, "Dense")
            z.append(np.empty((N, m), dtype))
            y.append(z[-1] if code == 0 else np.empty((N, m), dtype))
            dz.append(EMPTY2[self.dtype] if code == 0 else np.empty((N, m), dtype))
            dx.append(EMPTY2[self.dtype] if i == 0 else np.empty((N, n), dtype))
            fwd.append(self._product(products.gemm_plan(N, m, n, dtype)))
            dxs.append(self._product(products.gemm_plan(N, n, m, dtype) if i else products.NO_PRODUCT))
            dws.append(self._product(products.gemm_plan(m, n, N, dtype)))
        self.bufs = kstack.Buffers(
            tuple(z), tuple(y), tuple(dz), tuple(dx),
            *zip(*fwd), *zip(*dxs), *zip(*dws),
        )
        self.losses = np.empty(N, dtype)
        self.dlogits = np.empty((N, self.layers[-1].out_features), dtype)
        self.x = None
        self._forward = None
        self._backward = None

    def _product(self, plan):
        # owned: these buffers live as long as the stack (eligible() keeps every product small)
        return products.Packed(*owned(self.dtype, *[(s,) for s in products.packed_sizes(plan, self.dtype)])), plan

    def _arrays(self) -> kstack.Layers:
        W, b, gW, gb, code = [], [], [], [], []
        for layer in self.layers:
            W.append(layer._params["W"])
            b.append(layer._params.get("b", EMPTY1[self.dtype]))
            gW.append(layer._grads["W"])
            gb.append(layer._grads.get("b", EMPTY1[self.dtype]))
            code.append(_checks.activation_code(layer.activation, "Dense"))
        return kstack.Layers(tuple(W), tuple(b), tuple(gW), tuple(gb), tuple(code))

    def matches(self, model, x) -> bool:
        """The same layers with the same arrays and activations, and x as the stack was built for."""
        if tuple(model.layers) != self.layers or not _checks.is_plain(x, self.x_shape, self.dtype):
            return False
        a = self.arrays
        for i, layer in enumerate(self.layers):
            p = layer._params
            g = layer._grads
            if p["W"] is not a.W[i] or g["W"] is not a.gW[i] or p.get("b", a.b[i]) is not a.b[i] or g.get("b", a.gb[i]) is not a.gb[i]:
                return False
            if _checks.activation_code(layer.activation, "Dense") != a.code[i] or any(k in layer.__dict__ for k in _OVERRIDES):
                return False
            if not layer.trainable:
                return False
        return model.trainable

    def forward_loss(self, x, y, loss):
        """(loss value, logits): forward and cross-entropy, raising the layers' errors for non-finite
        values; None (nothing run) for targets that are not valid integer labels."""
        N, C = self.dlogits.shape
        try:
            labels = labels_or_none(y, N, C, "cross_entropy")
        except (TypeError, ValueError):
            return None  # bad labels: the layer-by-layer path raises the error, after its forward, as always
        if labels is None:
            return None  # probabilities as targets: the layer-by-layer path
        check = _checks.get_check_finite()
        scale = self.dtype.type(1.0 / N if loss.reduction == "mean" else 1.0)
        args = (x, labels, self.arrays, self.bufs, self.losses, self.dlogits, scale, check)
        if self._forward is None:  # numba's typing of these nested tuples is most of a call: once per stack
            self._forward = exact(kstack.stack_forward, args)
        status = self._forward(*args)
        done = len(self.layers) if status == kstack.OK or status == kstack.BAD_LOGITS else status - kstack.BAD_INPUT
        self._set_caches(x, done)
        logits = self.bufs.y[-1]
        if status == kstack.BAD_LOGITS:
            _checks.check_finite_values(logits, "logits", "cross_entropy")
        elif status != kstack.OK:
            _checks.check_finite_values(self._input(x, done), "x", "Dense.forward")
        self.x = x
        total = self.losses.sum(dtype=np.float64)
        value = float(total / N if loss.reduction == "mean" else total)
        loss._grad = self.dlogits.copy()  # the caller's to keep, as from cross_entropy
        return value, logits

    def backward(self) -> None:
        """Accumulate every layer's dW, db from the last forward_loss (no dL/dx of the input)."""
        args = (self.x, self.arrays, self.bufs, self.dlogits, _checks.get_check_finite())
        if self._backward is None:
            self._backward = exact(kstack.stack_backward, args)
        status = self._backward(*args)
        if status != kstack.OK:
            i = status - kstack.BAD_DY
            dy = self.dlogits if i == len(self.layers) - 1 else self.bufs.dx[i + 1]
            _checks.check_finite_values(dy, "dy", "Dense.backward")

    def example_calls(self) -> list:
        """[(compiled function, arguments)] of a forward_loss and a backward on a batch of zeros."""
        x = np.zeros(self.x_shape, self.dtype)
        labels = np.zeros(self.x_shape[0], np.int64)
        check = _checks.get_check_finite()
        scale = self.dtype.type(1.0)
        return [
            (kstack.stack_forward, (x, labels, self.arrays, self.bufs, self.losses, self.dlogits, scale, check)),
            (kstack.stack_backward, (x, self.arrays, self.bufs, self.dlogits, check)),
        ]

    def _input(self, x, i: int):
        return x if i == 0 else self.bufs.y[i - 1]

    def _set_caches(self, x, done: int) -> None:
        # what the layers' own forward leaves behind, so a later layer.backward works as after it
        lead = (self.x_shape[0],)
        for i in range(done):
            layer = self.layers[i]
            b = self.arrays.b[i] if "b" in layer._params else None
            layer._cache = (DenseCache(self._input(x, i), self.arrays.W[i], b, self.bufs.z[i], layer.activation), lead)
