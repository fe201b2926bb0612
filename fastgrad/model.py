"""Sequential model: a list of layers run forward in order and backward in reverse."""

from __future__ import annotations

import math

import numpy as np

from ._checks import as_array, as_indices, positive_int
from .layers.base import Layer, evaluating, layer_type, takes_indices, tree_arrays, walk, zero_frozen_grads
from .fused import DenseStack
from .fused import eligible as fused_eligible
from .losses import CrossEntropyLoss, Loss
from .optim import clip_grad_norm, named_parameters
from .training import LocalReplicas, train


class Sequential(Layer):
    """``Sequential(*layers)``: forward through each layer, backward in reverse.

    ``params`` / ``grads`` are flat dicts named ``"<index>.<name>"`` ("0.W",
    "1.b", ...; a block's children ``"0.inner.W"``) holding the layers' own
    arrays, so an optimizer that updates them in place updates the layers.
    A layer may appear once only (``Sequential(d, d)`` is refused).
    """

    _container = True
    #: True while backward_params runs (the lowest layer then gets backward_params, not backward)
    _params_only = False
    #: the fused step of the last training step (fastgrad.fused; None: layer by layer), and the one awaiting its backward
    _fused = None
    _fused_pending = None

    def __init__(self, *layers):
        # no Layer.__init__: params, grads and dtype are derived from the layers
        self._cache = None
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layer {i} must be a fastgrad Layer, got {type(layer).__name__}")
        self.layers = list(layers)
        walk(self)  # a layer given twice, or a model inside itself, is refused here

    def named_children(self) -> list:
        """The layers, named by their index: ``[("0", layer0), ("1", layer1), ...]``."""
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    @property
    def params(self) -> dict:
        """All layers' parameters as one dict ``{"0.W": array, "1.inner.W": ...}`` (the layers' own arrays)."""
        return tree_arrays(self, "params")

    @property
    def grads(self) -> dict:
        return tree_arrays(self, "grads")

    @property
    def buffers(self) -> dict:
        """All layers' buffers (BatchNorm running statistics) as one dict ``{"1.running_mean": array, ...}``."""
        return tree_arrays(self, "buffers")

    @property
    def dtype(self):
        """The dtype of the first layer with parameters (float32 if none has any)."""
        for layer in self.layers:
            if layer.params:
                return layer.dtype
        return np.dtype(np.float32)

    def forward(self, x):
        if not self.layers:
            return as_array(x, "x", "Sequential.forward")
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        """dL/dx of the input; each layer's parameter gradients accumulate into its ``grads``.

        A layer with ``trainable = False`` (or every layer, when this model is
        frozen) still passes the gradient on, but its ``grads`` are left at zero.
        """
        return self._backward(dy, 0)

    def backward_params(self, dy) -> None:
        """The backward pass training needs: ``backward`` without dL/dx of the input.

        Layers below the lowest one with trainable parameters are skipped (a
        frozen feature extractor costs no backward pass at all); returns None.
        """
        lowest = next((i for i, layer in enumerate(self.layers) if self.trainable and named_parameters(layer)), len(self.layers))
        self._params_only = True
        try:
            self._backward(dy, lowest)
        finally:
            self._params_only = False

    def _backward(self, dy, stop):
        # backward_params (stop > 0 or a model trained from its first layer): the lowest layer's
        # dL/dx is read by nobody, so it gets backward_params, which may skip computing it
        frozen = not self.trainable
        for i in range(len(self.layers) - 1, stop - 1, -1):
            layer = self.layers[i]
            if i == stop and self._params_only:
                layer.backward_params(dy)
            else:
                dy = layer.backward(dy)
            if frozen or not layer.trainable:
                layer.zero_grad()
            else:
                zero_frozen_grads(layer)  # a frozen child inside a block
        return None if self._params_only else dy

    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()

    def get_config(self):
        return {"layers": [{"type": layer_type(type(layer)), "config": layer.get_config()} for layer in self.layers]}

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def summary(self, input_shape=None) -> str:
        """A table of layers, output shapes (when ``input_shape`` is given) and parameter counts.

        A block's children follow it on indented rows named by their path
        (``0.inner``); a block's count includes its children's.
        """
        rows = [("#", "layer", "output shape", "params")]
        shape = tuple(input_shape) if input_shape is not None else None
        for i, layer in enumerate(self.layers):
            if shape is not None:
                shape = layer.output_shape(shape)
            rows.append((str(i), repr(layer), "?" if shape is None else str(("N",) + tuple(shape)), f"{layer.num_params():,}"))
            for path, child in walk(layer)[1:]:
                indent = "  " * (path.count(".") + 1)
                rows.append((f"{i}.{path}", indent + repr(child), "", f"{child.num_params():,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"total parameters: {self.num_params():,}")
        return "\n".join(lines)

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential({inner})"

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    # -- training -----------------------------------------------------------
    def predict(self, x, batch_size=256):
        """Forward pass in batches, in evaluation mode (Dropout off, BatchNorm on its running
        statistics; each layer's mode is restored afterwards); no gradients kept beyond the last batch's cache.
        """
        x = self._data(x, "Sequential.predict", None)
        batch_size = positive_int(batch_size, "batch_size", "Sequential.predict")
        with evaluating(self):
            outs = [self.forward(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return np.concatenate(outs, axis=0)

    def _data(self, x, where, dtype):
        """x for predict/evaluate: int64 indices when the first layer takes indices (Embedding), else floats."""
        return as_indices(x, "x", where) if takes_indices(self) else as_array(x, "x", where, dtype=dtype)

    def fit(
        self,
        x,
        y,
        loss,
        optimizer,
        epochs=1,
        batch_size=32,
        validation_data=None,
        progress=True,
        shuffle=True,
        seed=None,
        clip_norm=None,
        initial_epoch=0,
        callbacks=None,
        augment=None,
    ) -> dict:
        """Train with mini-batches for epochs ``initial_epoch .. epochs-1``; returns a history dict of per-epoch lists.

        history keys: ``loss`` (mean training loss), ``time`` (seconds), and
        ``accuracy`` for CrossEntropyLoss with integer labels; ``val_loss`` /
        ``val_accuracy`` when ``validation_data=(x_val, y_val)`` is given.
        A non-finite loss or gradient norm stops training with FloatingPointError
        naming the epoch and batch.  ``progress`` draws a bar on stderr.

        ``seed`` (default: ``fg.initial_seed()``, the seed of ``fg.manual_seed``)
        fixes the shuffle: epoch ``e`` visits the samples in an order that
        depends only on (seed, e), so ``initial_epoch=k`` continues a run that
        stopped after k epochs (with its model and optimizer restored, e.g. by
        ``fg.load_checkpoint``) exactly.  ``clip_norm`` clips the gradients of
        the parameters the optimizer trains.  ``callbacks``: objects with any of
        ``on_train_begin(model)``, ``on_epoch_end(epoch, logs, model)`` (True
        stops training), ``on_train_end(model)``; LR schedules are callbacks.
        ``augment(x, y, rng) -> (x, y)`` makes each epoch's training set (see
        :func:`fastgrad.training.train`).
        """
        return train(
            self, x, y, loss, LocalReplicas(optimizer, "Sequential.fit"), epochs=epochs, batch_size=batch_size,
            validation_data=validation_data, progress=progress, shuffle=shuffle, seed=seed, clip_norm=clip_norm,
            initial_epoch=initial_epoch, callbacks=callbacks, augment=augment, where="Sequential.fit",
        )

    def train_step(self, x, y, loss, optimizer, clip_norm=None) -> float:
        """One training step for a hand-written loop; returns the loss value.

        zero_grad, forward, ``value = loss(pred, y)``, ``backward(loss.backward())``,
        optional clipping of the optimizer's gradients, ``optimizer.step()``.  A
        non-finite loss raises FloatingPointError before any update.
        """
        where = "Sequential.train_step"
        if not isinstance(loss, Loss):
            raise TypeError(f"{where}: loss must be a fastgrad loss (MSELoss, CrossEntropyLoss), got {type(loss).__name__}")
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"{where}: optimizer must have a step() method, got {type(optimizer).__name__}")
        self.zero_grad()
        value, _ = self._forward_loss(x, y, loss)
        if not math.isfinite(value):
            raise FloatingPointError(f"{where}: loss is {value}; lower the learning rate or check the data")
        self._backward_loss(loss)
        if clip_norm is not None:
            clip_grad_norm(optimizer, clip_norm)
        optimizer.step()
        return value

    def _forward_loss(self, x, y, loss) -> tuple:
        """(loss value, output) of a training step's forward: through a fused DenseStack when this
        model is one (:mod:`fastgrad.fused`), else layer by layer.  ``_backward_loss`` follows."""
        # one stack per batch shape (an epoch's last batch is often shorter), a few kept
        stacks = self.__dict__.setdefault("_fused_stacks", {})
        stack = stacks.get(getattr(x, "shape", None))
        if stack is None or not stack.matches(self, x):
            stack = DenseStack(self, x.shape, x.dtype) if fused_eligible(self, x, loss) else None
            if stack is not None:
                if len(stacks) >= 4:
                    stacks.clear()
                stacks[x.shape] = stack
        self._fused = stack
        got = None if stack is None else stack.forward_loss(x, y, loss)
        self._fused_pending = None if got is None else stack
        if got is not None:
            return got
        out = self.forward(x)
        return loss(out, y), out

    def _backward_loss(self, loss) -> None:
        """backward_params of the last ``_forward_loss`` (fused when it was)."""
        stack = self._fused_pending
        self._fused_pending = None
        if stack is not None:
            stack.backward()
        else:
            self.backward_params(loss.backward())

    def evaluate(self, x, y, loss, batch_size=256):
        """(mean loss, accuracy or None) over a data set, in batches, in evaluation mode (see predict)."""
        x = self._data(x, "Sequential.evaluate", self.dtype)
        y = np.asarray(y)
        out = self.predict(x, batch_size)
        value = loss(out, y)
        acc = None
        if isinstance(loss, CrossEntropyLoss) and y.dtype.kind in "iu":
            acc = float(np.mean(np.argmax(out, axis=1) == y))
        return value, acc
