"""Sequential model: a list of layers run forward in order and backward in reverse."""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from ._checks import as_array, as_indices, positive_int
from .layers.base import Layer, evaluating, layer_type, takes_indices
from .losses import CrossEntropyLoss, Loss


class Sequential(Layer):
    """``Sequential(*layers)``: forward through each layer, backward in reverse.

    ``params`` / ``grads`` are flat dicts named ``"<index>.<name>"`` ("0.W",
    "1.b", ...) holding the layers' own arrays, so an optimizer that updates
    them in place updates the layers.
    """

    def __init__(self, *layers):
        # no Layer.__init__: params, grads and dtype are derived from the layers
        self._cache = None
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layer {i} must be a fastgrad Layer, got {type(layer).__name__}")
        self.layers = list(layers)

    @property
    def params(self) -> dict:
        """All layers' parameters as one dict ``{"0.W": array, ...}`` (the layers' own arrays)."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params.items()}

    @property
    def grads(self) -> dict:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.grads.items()}

    @property
    def buffers(self) -> dict:
        """All layers' buffers (BatchNorm running statistics) as one dict ``{"1.running_mean": array, ...}``."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in getattr(layer, "buffers", {}).items()}

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
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

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
        """A table of layers, output shapes (when ``input_shape`` is given) and parameter counts."""
        rows = [("#", "layer", "output shape", "params")]
        shape = tuple(input_shape) if input_shape is not None else None
        for i, layer in enumerate(self.layers):
            if shape is not None:
                shape = layer.output_shape(shape)
            rows.append((str(i), repr(layer), "?" if shape is None else str(("N",) + tuple(shape)), f"{layer.num_params():,}"))
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
        seed=0,
        clip_norm=None,
    ) -> dict:
        """Train with mini-batches; returns a history dict of per-epoch lists.

        history keys: ``loss`` (mean training loss), ``time`` (seconds), and
        ``accuracy`` for CrossEntropyLoss with integer labels; ``val_loss`` /
        ``val_accuracy`` when ``validation_data=(x_val, y_val)`` is given.
        A non-finite loss or gradient norm stops training with FloatingPointError
        naming the epoch and batch.  ``progress`` draws a bar on stderr.
        """
        where = "Sequential.fit"
        if not hasattr(optimizer, "step"):
            raise TypeError(f"{where}: optimizer must have a step() method, got {type(optimizer).__name__}")
        x, y, epochs, batch_size, classify, history = fit_setup(
            x, y, loss, epochs, batch_size, validation_data, None if takes_indices(self) else self.dtype, where
        )
        rng = np.random.default_rng(seed)
        n = x.shape[0]
        n_batches = math.ceil(n / batch_size)
        bar = ProgressBar(epochs, n_batches, enabled=progress)
        for epoch in range(epochs):
            start = time.perf_counter()
            order = rng.permutation(n) if shuffle else np.arange(n)
            total, correct = 0.0, 0
            for b in range(n_batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                xb, yb = x[idx], y[idx]
                optimizer.zero_grad()
                out = self.forward(xb)
                value = loss(out, yb)
                if not math.isfinite(value):
                    bar.close()
                    raise FloatingPointError(
                        f"{where}: loss is {value} at epoch {epoch + 1}, batch {b + 1}; lower the learning rate or check the data"
                    )
                self.backward(loss.backward())
                if clip_norm is not None:
                    from .optim import clip_grad_norm

                    norm = clip_grad_norm(self, clip_norm)
                    if not math.isfinite(norm):
                        bar.close()
                        raise FloatingPointError(f"{where}: gradient norm is {norm} at epoch {epoch + 1}, batch {b + 1}")
                optimizer.step()
                total += value * len(idx)
                if classify:
                    correct += int(np.sum(np.argmax(out, axis=1) == yb))
                bar.update(epoch, b + 1, total / min(n, (b + 1) * batch_size))
            history["loss"].append(total / n)
            if classify:
                history["accuracy"].append(correct / n)
            if validation_data is not None:
                vl, va = self.evaluate(validation_data[0], validation_data[1], loss)
                history["val_loss"].append(vl)
                if classify:
                    history["val_accuracy"].append(va)
            history["time"].append(time.perf_counter() - start)
            bar.end_epoch(epoch, {k: v[-1] for k, v in history.items() if k != "time"}, history["time"][-1])
        bar.close()
        return history

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


def fit_setup(x, y, loss, epochs, batch_size, validation_data, dtype, where):
    """Validate fit()'s arguments; returns (x, y, epochs, batch_size, classify, empty history).

    Shared by Sequential.fit and distributed.fit so both accept and refuse the
    same inputs and fill the same history keys.  ``dtype`` None: x is integer
    indices (a model starting with an Embedding), kept as int64.
    """
    if not isinstance(loss, Loss):
        raise TypeError(f"{where}: loss must be a fastgrad loss (MSELoss, CrossEntropyLoss), got {type(loss).__name__}")
    epochs = positive_int(epochs, "epochs", where)
    batch_size = positive_int(batch_size, "batch_size", where)
    x = as_indices(x, "x", where) if dtype is None else as_array(x, "x", where, dtype=dtype)
    y = np.asarray(y)
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(f"{where}: y has {y.shape[:1]} samples but x has {x.shape[:1]}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: x is empty")
    classify = isinstance(loss, CrossEntropyLoss) and y.dtype.kind in "iu"
    history = {"loss": [], "time": []}
    if classify:
        history["accuracy"] = []
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise TypeError(f"{where}: validation_data must be a pair (x_val, y_val)")
        history["val_loss"] = []
        if classify:
            history["val_accuracy"] = []
    return x, y, epochs, batch_size, classify, history


class ProgressBar:
    """A one-line progress bar on stderr; one line per epoch when not a terminal."""

    def __init__(self, epochs, batches, enabled=True, width=24):
        self.epochs, self.batches, self.width = epochs, batches, width
        self.enabled = bool(enabled)
        self.tty = self.enabled and sys.stderr.isatty()
        self._last = 0.0

    def update(self, epoch, batch, running_loss):
        if not self.tty:
            return
        now = time.perf_counter()
        if batch != self.batches and now - self._last < 0.1:
            return
        self._last = now
        filled = int(self.width * batch / self.batches)
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\repoch {epoch + 1}/{self.epochs} [{bar}] {batch}/{self.batches} loss {running_loss:.4f}")
        sys.stderr.flush()

    def end_epoch(self, epoch, metrics, seconds):
        if not self.enabled:
            return
        text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        prefix = "\r" if self.tty else ""
        sys.stderr.write(f"{prefix}epoch {epoch + 1}/{self.epochs} {text} ({seconds:.2f} s)".ljust(self.width + 60) + "\n")
        sys.stderr.flush()

    def close(self):
        pass
