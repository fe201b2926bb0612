"""Callbacks for ``fit(..., callbacks=[...])``: early stopping, checkpoints, a CSV log.

A callback is any object with any of ``on_train_begin(model)``,
``on_epoch_end(epoch, logs, model)`` and ``on_train_end(model)``; returning
True from ``on_epoch_end`` stops training after that epoch (every callback
still sees the epoch).  ``epoch`` counts from 0; ``logs`` holds the epoch's
history values (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``,
``time``) and ``lr``.  A callback may also define ``set_context(context)`` to
receive the optimizer and the rest of the run (:class:`fastgrad.training.FitContext`),
and ``state_dict()`` / ``load_state_dict()`` so that ``ModelCheckpoint`` saves
its state for a resumed run.  LR schedules (:mod:`fastgrad.schedules`) are
callbacks too.
"""

from __future__ import annotations

import math
import numbers
import os

from .checkpoint import save_checkpoint

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "CSVLogger"]


class Callback:
    """Optional base class: no-op hooks; ``set_context`` keeps the run's context in ``self.context``."""

    context = None

    def set_context(self, context) -> None:
        self.context = context

    def on_train_begin(self, model) -> None:
        pass

    def on_epoch_end(self, epoch, logs, model):
        return None

    def on_train_end(self, model) -> None:
        pass


class _Monitor:
    """The monitored value's bookkeeping shared by EarlyStopping and ModelCheckpoint."""

    def __init__(self, monitor, mode, min_delta, where):
        if not isinstance(monitor, str):
            raise TypeError(f"{where}: monitor must be a logs key such as 'val_loss', got {type(monitor).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"{where}: mode must be 'min' or 'max', got {mode!r}"[:290])
        if isinstance(min_delta, bool) or not isinstance(min_delta, numbers.Real) or not min_delta >= 0 or math.isinf(min_delta):
            raise ValueError(f"{where}: min_delta must be a finite number >= 0, got {min_delta!r}"[:290])
        self.monitor, self.mode, self.min_delta, self.where = monitor, mode, float(min_delta), where
        self.best = math.inf if mode == "min" else -math.inf

    def value(self, logs) -> float:
        if self.monitor not in logs:
            hint = " (val_* keys need validation_data)" if self.monitor.startswith("val_") else ""
            raise KeyError(f"{self.where}: monitor {self.monitor!r} is not in the epoch's logs {sorted(logs)}{hint}")
        return float(logs[self.monitor])

    def improved(self, current) -> bool:
        """Better than ``best`` by more than ``min_delta`` (Keras's rule; NaN never improves)."""
        if self.mode == "min":
            return current + self.min_delta < self.best
        return current - self.min_delta > self.best


class EarlyStopping(Callback, _Monitor):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs (Keras's rule).

    An epoch improves when the value beats the best so far by more than
    ``min_delta`` (``mode="min"``: lower is better; ``"max"``: higher).  After
    an epoch without improvement ``wait`` grows; training stops once
    ``wait >= max(patience, 1)``.  ``restore_best=True`` puts the weights of the
    best epoch back into the model when training ends (stopped or not).
    Attributes after training: ``best``, ``best_epoch``, ``stopped_epoch``
    (None if it did not stop), ``wait``.
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="min", restore_best=False):
        _Monitor.__init__(self, monitor, mode, min_delta, "EarlyStopping")
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}"[:290])
        if not isinstance(restore_best, bool):
            raise TypeError(f"EarlyStopping: restore_best must be True or False, got {type(restore_best).__name__}")
        self.patience, self.restore_best = int(patience), restore_best
        self.wait, self.best_epoch, self.stopped_epoch, self.best_state = 0, None, None, None

    def on_train_begin(self, model) -> None:
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs, model):
        current = self.value(logs)
        if self.improved(current):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best:
                self.best_state = model.state_dict()
            return False
        self.wait += 1
        if self.wait >= max(self.patience, 1):
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, model) -> None:
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        """The counters (not the best weights: the checkpoint of the best epoch holds those)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state) -> None:
        if not isinstance(state, dict) or set(state) != {"best", "best_epoch", "wait"}:
            raise ValueError(f"EarlyStopping.load_state_dict: state must have the keys best, best_epoch, wait, got {state!r}"[:290])
        self.best, self.best_epoch, self.wait = float(state["best"]), state["best_epoch"], int(state["wait"])


class ModelCheckpoint(Callback, _Monitor):
    """Write a checkpoint (``fg.save_checkpoint``) at the end of every epoch, or only of improving ones.

    ``path`` may contain ``{epoch}`` and logs keys (``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``);
    ``epoch`` there and in the file is the number of epochs completed (resume
    with ``initial_epoch=ck.epoch``).  ``save_best_only=True`` writes only when
    ``monitor`` improves (``mode`` as EarlyStopping).  The file holds the
    model, the optimizer of the ``fit`` call, the random state, the epoch's
    ``logs`` and the state of every callback that has one
    (``extra["callbacks"]``, restored by ``Checkpoint.restore_callbacks``).
    Under ``distributed.fit`` rank 0 writes.
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="min"):
        _Monitor.__init__(self, monitor, mode, 0.0, "ModelCheckpoint")
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"ModelCheckpoint: path must be a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(save_best_only, bool):
            raise TypeError(f"ModelCheckpoint: save_best_only must be True or False, got {type(save_best_only).__name__}")
        self.path, self.save_best_only = path, save_best_only
        self.last_path = None

    def on_epoch_end(self, epoch, logs, model):
        if self.save_best_only:
            current = self.value(logs)
            if not self.improved(current):
                return False
            self.best = current
        path = self.path.format(epoch=epoch + 1, **logs) if "{" in self.path else self.path
        context = self.context
        optimizer = None if context is None else context.optimizer
        callbacks = [] if context is None else context.callbacks
        states = [cb.state_dict() if callable(getattr(cb, "state_dict", None)) else None for cb in callbacks]

        def write():
            save_checkpoint(path, model, optimizer, epoch + 1, logs=logs, callbacks=states)

        if context is None:
            write()
        else:
            context.on_root(write)
        self.last_path = path
        return False

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state) -> None:
        if not isinstance(state, dict) or set(state) != {"best"}:
            raise ValueError(f"ModelCheckpoint.load_state_dict: state must be {{'best': number}}, got {state!r}"[:290])
        self.best = float(state["best"])


class CSVLogger(Callback):
    """Append one row per epoch to a CSV file: ``epoch`` (from 0), then the logs' keys in order.

    ``append=False`` starts a new file when training begins; ``append=True``
    continues an existing one (a resumed run).  The header is written when the
    file is empty.  Under ``distributed.fit`` rank 0 writes.
    """

    def __init__(self, path, separator=",", append=False):
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"CSVLogger: path must be a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}"[:290])
        self.path, self.separator, self.append = path, separator, bool(append)

    def _root(self, fn):
        return fn() if self.context is None else self.context.on_root(fn)

    def on_train_begin(self, model) -> None:
        if not self.append:
            self._root(lambda: open(self.path, "w").close())

    def on_epoch_end(self, epoch, logs, model):
        def write():
            with open(self.path, "a") as fh:
                if fh.tell() == 0:
                    fh.write(self.separator.join(["epoch", *logs]) + "\n")
                fh.write(self.separator.join([str(epoch), *(repr(float(v)) for v in logs.values())]) + "\n")

        self._root(write)
        return False
