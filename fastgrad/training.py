"""The training loop: ``Sequential.fit`` and ``distributed.fit`` are this one loop.

:func:`train` runs epochs of mini-batch steps (zero_grad, forward, loss,
backward, clip, step), validation, progress and callbacks.  What differs
between one process and several is behind a small *replicas* object:
:class:`LocalReplicas` here (rank 0 of 1: no communication, no copies), and
``distributed.MPIReplicas`` (shards each global batch over the ranks and
averages the gradients with one Allreduce per step).

Sample order: epoch ``e`` visits the samples in the ``(e+1)``-th
``permutation(n)`` of ``np.random.default_rng(seed)`` (:func:`epoch_order`), a
function of (seed, e) only, so ``fit(..., initial_epoch=k)`` continues a run
exactly.  ``seed=None`` means ``fg.initial_seed()``, the seed of the last
``fg.manual_seed``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
import time

import numpy as np

from ._checks import as_array, as_indices, positive_int, real_number
from .layers.base import takes_indices
from .losses import CrossEntropyLoss, Loss
from .optim import clip_grad_norm, named_parameters
from .random import check_seed, epoch_generator, initial_seed

__all__ = [
    "train",
    "check_fit_args",
    "input_dtype",
    "as_input",
    "ProgressBar",
    "LocalReplicas",
    "FitContext",
    "CALLBACK_METHODS",
    "epoch_order",
    "epoch_orders",
    "batch_shards",
    "shard_bounds",
]

#: a callback is any object with at least one of these methods
CALLBACK_METHODS = ("set_context", "on_train_begin", "on_epoch_end", "on_train_end")


# -- sample order: pure functions of (n, seed, epoch, batch_size, rank, world) ------------------

def epoch_order(n, epoch=0, seed=0, shuffle=True) -> np.ndarray:
    """The sample order of ``epoch``: the (epoch+1)-th ``permutation(n)`` of ``default_rng(seed)``.

    Every rank computes the same order from the shared seed; no communication.
    """
    return next(epoch_orders(positive_int(n, "n", "epoch_order"), seed, shuffle, start=epoch))


def epoch_orders(n, seed, shuffle, start=0):
    """Successive epoch orders from epoch ``start`` on (``start`` permutations are drawn and skipped)."""
    rng = np.random.default_rng(seed)
    if shuffle:
        for _ in range(int(start)):
            rng.permutation(n)
    while True:
        yield rng.permutation(n) if shuffle else np.arange(n)


def shard_bounds(count, rank, world) -> tuple:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``count`` items (sizes differ by at most one)."""
    return (rank * count) // world, ((rank + 1) * count) // world


def batch_shards(order, batch_size, rank, world) -> list:
    """This rank's index array for every global batch of ``order`` (one entry per step).

    Global batch b is ``order[b*B:(b+1)*B]``; rank r takes its contiguous slice
    ``[r*m//world, (r+1)*m//world)`` (m = the batch's length), so shard sizes
    differ by at most one, every rank has the same number of steps (some shards
    of a short last batch may be empty), and the union over ranks of each step
    is exactly the global batch.  With ``world == 1`` the shards are the batches.
    """
    where = "batch_shards"
    batch_size = positive_int(batch_size, "batch_size", where)
    world = positive_int(world, "world", where)
    if not (isinstance(rank, (int, np.integer)) and 0 <= rank < world):
        raise ValueError(f"{where}: rank must be an int in [0, {world}), got {rank!r}")
    order = np.asarray(order)
    shards = []
    for start in range(0, order.shape[0], batch_size):
        batch = order[start : start + batch_size]
        lo, hi = shard_bounds(batch.shape[0], int(rank), world)
        shards.append(batch[lo:hi])
    return shards


# -- arguments, progress, callbacks ---------------------------------------------------------------

def check_fit_args(x, y, loss, epochs, batch_size, validation_data, dtype, where):
    """Validate fit()'s data arguments; returns (x, y, epochs, batch_size, classify, empty history).

    ``dtype``: x is converted to it; None: x is integer indices, kept as int64
    (a model that starts with an Embedding, see :func:`input_dtype`).

    history keys: ``loss``, ``time``; ``accuracy`` for CrossEntropyLoss with
    integer labels; ``val_loss`` (and ``val_accuracy``) with validation data.
    """
    if not isinstance(loss, Loss):
        raise TypeError(f"{where}: loss must be a fastgrad loss (MSELoss, CrossEntropyLoss), got {type(loss).__name__}")
    epochs = positive_int(epochs, "epochs", where)
    batch_size = positive_int(batch_size, "batch_size", where)
    x, y = _check_data(x, y, dtype, where, "x", "y")
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


def input_dtype(model):
    """The dtype fit converts x to: the model's, or None for integer indices (an Embedding first)."""
    return None if takes_indices(model) else model.dtype


def as_input(x, dtype, name, where):
    """x as a model reads it: a C array of ``dtype``, or int64 indices when ``dtype`` is None (see input_dtype)."""
    return as_indices(x, name, where) if dtype is None else as_array(x, name, where, dtype=dtype)


def _check_data(x, y, dtype, where, xname, yname):
    x = as_input(x, dtype, xname, where)
    y = np.asarray(y)
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(f"{where}: {yname} has {y.shape[:1]} samples but {xname} has {x.shape[:1]}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: {xname} is empty")
    return x, y


def _check_callbacks(callbacks, where) -> list:
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"{where}: callbacks must be a list, got {type(callbacks).__name__}")
    for i, cb in enumerate(callbacks):
        if not any(callable(getattr(cb, name, None)) for name in CALLBACK_METHODS):
            raise TypeError(
                f"{where}: callbacks[{i}] ({type(cb).__name__}) has none of the methods on_train_begin, on_epoch_end, on_train_end"
            )
    return list(callbacks)


def _call(callbacks, method, *args) -> bool:
    """Call ``method`` on every callback that has it; True if any returned True (stop training)."""
    stop = False
    for cb in callbacks:
        fn = getattr(cb, method, None)
        if fn is not None and fn(*args) is True:
            stop = True
    return stop


class ProgressBar:
    """A one-line progress bar on stderr; one line per epoch when not a terminal."""

    def __init__(self, epochs, batches, enabled=True, width=24):
        self.epochs, self.batches, self.width = epochs, batches, width
        self.enabled = bool(enabled)
        self.tty = self.enabled and sys.stderr.isatty()
        self.last = 0.0

    def update(self, epoch, batch, running_loss):
        if not self.tty:
            return
        now = time.perf_counter()
        if batch != self.batches and now - self.last < 0.1:
            return
        self.last = now
        filled = int(self.width * batch / self.batches)
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\repoch {epoch + 1}/{self.epochs} [{bar}] {batch}/{self.batches} loss {running_loss:.4f}")
        sys.stderr.flush()

    def end_epoch(self, epoch, metrics, seconds):
        if not self.enabled:
            return
        text = " ".join(f"{k} {v:.4g}" if k == "lr" else f"{k} {v:.4f}" for k, v in metrics.items())
        prefix = "\r" if self.tty else ""
        sys.stderr.write(f"{prefix}epoch {epoch + 1}/{self.epochs} {text} ({seconds:.2f} s)".ljust(self.width + 60) + "\n")
        sys.stderr.flush()


class FitContext:
    """What a callback may need besides the model, given to its ``set_context(context)`` before training.

    Attributes: ``model``, ``optimizer`` (the plain SGD/Adam, also under
    ``distributed.fit``), ``loss``, ``epochs``, ``initial_epoch``, ``seed``,
    ``rank``, ``world``, ``callbacks`` (the whole list) and ``history`` (filled
    as epochs end).  ``on_root(fn)`` runs ``fn()`` on rank 0 only and raises on
    every rank if it failed there (file writes under MPI).
    """

    def __init__(self, model, optimizer, loss, epochs, initial_epoch, seed, replicas, callbacks, history):
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self.epochs, self.initial_epoch, self.seed = epochs, initial_epoch, seed
        self.rank, self.world = replicas.rank, replicas.world
        self.callbacks, self.history = callbacks, history
        self.on_root = replicas.on_root


class LocalReplicas:
    """The one-process side of :func:`train`: rank 0 of 1, nothing to communicate.

    Errors raise where they happen; the step's loss and correct count are this
    process's own; the optimizer is stepped directly.
    """

    rank = 0
    world = 1

    def __init__(self, optimizer, where="fit"):
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"{where}: optimizer must have a step() method, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self._no_guard = contextlib.nullcontext()

    def common(self, value):
        """Rank 0's value (here: the value)."""
        return value

    def agree(self, value, what, where) -> None:
        """Raise on every rank if ranks differ in ``value`` (here: nothing to compare)."""

    def broadcast(self, model) -> None:
        """Give every rank rank 0's parameters (here: nothing to do)."""

    def guard(self):
        return self._no_guard

    def synchronize(self, count, total, loss, correct):
        """(mean loss of the global batch, correct predictions in it): here this process's own."""
        return loss, correct

    def step(self) -> None:
        self.optimizer.step()

    def evaluate(self, model, x, y, loss):
        return model.evaluate(x, y, loss)

    def on_root(self, fn):
        return fn()


def _check_optimizer_covers(model, optimizer, where) -> None:
    """Every parameter the optimizer trains must be one of the model's arrays (checked for fastgrad optimizers)."""
    if not hasattr(optimizer, "model"):
        return
    mine = {id(p) for p in model.params.values()}
    if any(id(p) not in mine for _, p, _ in named_parameters(optimizer.model, trainable_only=False)):
        raise ValueError(f"{where}: the optimizer was built for a different model")


# -- the loop -----------------------------------------------------------------------------------

def train(
    model,
    x,
    y,
    loss,
    replicas,
    *,
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
    where="fit",
) -> dict:
    """Train ``model`` for epochs ``initial_epoch .. epochs-1``; returns the history of those epochs.

    ``replicas``: :class:`LocalReplicas` or ``distributed.MPIReplicas`` (holds
    the optimizer).  ``batch_size`` is the global batch.  Per step: zero_grad,
    forward, loss, backward (skipped when the loss is not finite), gradient
    synchronisation, a non-finite check of the global loss (FloatingPointError
    naming epoch and batch), clipping of the optimizer's gradients to
    ``clip_norm``, and the optimizer step.  Per epoch: validation, progress,
    then each callback's ``on_epoch_end(epoch, logs, model)``; logs are the
    epoch's history values plus ``lr`` (the rate used in the epoch).  A
    callback returning True stops training after this epoch.

    ``augment(x, y, rng) -> (x_epoch, y_epoch)``: called at the start of each
    epoch with ``epoch_generator(seed, epoch)``; the epoch trains on what it
    returns (any number of samples), shuffled with the same generator, so it
    too depends on (seed, epoch) only.
    """
    optimizer = replicas.optimizer
    x, y, epochs, batch_size, classify, history = check_fit_args(
        x, y, loss, epochs, batch_size, validation_data, input_dtype(model), where
    )
    if isinstance(initial_epoch, (bool, np.bool_)) or not isinstance(initial_epoch, numbers.Integral):
        raise TypeError(f"{where}: initial_epoch must be an int, got {type(initial_epoch).__name__}")
    if not 0 <= initial_epoch <= epochs:
        raise ValueError(f"{where}: initial_epoch must be in [0, epochs={epochs}], got {initial_epoch}")
    initial_epoch = int(initial_epoch)
    if clip_norm is not None:
        clip_norm = real_number(clip_norm, "clip_norm", where, low=0.0, low_open=True)
    if augment is not None and not callable(augment):
        raise TypeError(f"{where}: augment must be a function (x, y, rng) -> (x, y), got {type(augment).__name__}")
    callbacks = _check_callbacks(callbacks, where)
    _check_optimizer_covers(model, optimizer, where)
    seed = None if seed is None else check_seed(seed, where)
    n = int(x.shape[0])
    setup = (n, epochs, batch_size, bool(shuffle), seed, clip_norm, validation_data is not None, initial_epoch, augment is not None)
    replicas.agree(setup, "(n_samples, epochs, batch_size, shuffle, seed, clip_norm, validation, initial_epoch, augment)", where)
    if seed is None:  # every rank takes this branch (agreed above) and rank 0's default seed
        seed = replicas.common(initial_seed())
    replicas.broadcast(model)
    backward = getattr(model, "backward_params", model.backward)
    # a Sequential's step: forward + loss and backward, fused for a stack of Dense layers (fastgrad.fused)
    forward_loss = getattr(model, "_forward_loss", None)
    # fastgrad optimizers expose the gradients they train; a duck-typed one gets the whole model's clipped
    clip_target = optimizer if hasattr(optimizer, "grads") else model
    context = FitContext(model, optimizer, loss, epochs, initial_epoch, seed, replicas, callbacks, history)
    for cb in callbacks:
        if hasattr(cb, "set_context"):
            cb.set_context(context)
    _call(callbacks, "on_train_begin", model)
    bar = ProgressBar(epochs, math.ceil(n / batch_size), enabled=bool(progress) and replicas.rank == 0)
    orders = None if augment is not None else epoch_orders(n, seed, shuffle, initial_epoch)
    for epoch in range(initial_epoch, epochs):
        start = time.perf_counter()
        lr = getattr(optimizer, "lr", None)
        if augment is None:
            xe, ye, order = x, y, next(orders)
        else:
            rng = epoch_generator(seed, epoch)
            xe, ye = _check_data(*augment(x, y, rng), input_dtype(model), where, "augment(...)[0]", "augment(...)[1]")
            replicas.agree(xe.shape[0], "the number of augmented samples", where)
            order = rng.permutation(xe.shape[0]) if shuffle else np.arange(xe.shape[0])
        ne = int(xe.shape[0])
        shards = batch_shards(order, batch_size, replicas.rank, replicas.world)
        bar.batches = len(shards)
        total, correct, seen = 0.0, 0, 0
        for b, idx in enumerate(shards):
            global_count = min(batch_size, ne - b * batch_size)
            model.zero_grad()
            value, local_correct = None, 0
            if idx.shape[0]:
                with replicas.guard():
                    xb, yb = xe[idx], ye[idx]
                    if forward_loss is not None:
                        value, out = forward_loss(xb, yb, loss)
                        if math.isfinite(value):  # a non-finite loss stops training below, on every rank
                            model._backward_loss(loss)
                    else:
                        out = model.forward(xb)
                        value = loss(out, yb)
                        if math.isfinite(value):
                            backward(loss.backward())
                    if classify:
                        local_correct = int(np.sum(np.argmax(out, axis=1) == yb))
            step_loss, step_correct = replicas.synchronize(idx.shape[0], global_count, 0.0 if value is None else value, local_correct)
            if step_loss is None or not math.isfinite(step_loss):
                raise FloatingPointError(
                    f"{where}: loss is {step_loss} at epoch {epoch + 1}, batch {b + 1}; lower the learning rate or check the data"
                )
            if clip_norm is not None:
                norm = clip_grad_norm(clip_target, clip_norm)
                if not math.isfinite(norm):
                    raise FloatingPointError(f"{where}: gradient norm is {norm} at epoch {epoch + 1}, batch {b + 1}")
            replicas.step()
            total += step_loss * global_count
            correct += step_correct
            seen += global_count
            bar.update(epoch, b + 1, total / seen)
        history["loss"].append(total / ne)
        if classify:
            history["accuracy"].append(correct / ne)
        if validation_data is not None:
            vl, va = replicas.evaluate(model, validation_data[0], validation_data[1], loss)
            history["val_loss"].append(vl)
            if classify:
                history["val_accuracy"].append(va)
        history["time"].append(time.perf_counter() - start)
        logs = {k: v[-1] for k, v in history.items()}
        if lr is not None:
            logs["lr"] = float(lr)
        bar.end_epoch(epoch, {k: v for k, v in logs.items() if k != "time"}, logs["time"])
        if _call(callbacks, "on_epoch_end", epoch, logs, model):
            break
    _call(callbacks, "on_train_end", model)
    return history
