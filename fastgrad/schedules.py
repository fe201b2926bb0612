"""Learning-rate schedules with the formulas, defaults and ``step()`` semantics of ``torch.optim.lr_scheduler``.

A schedule sets ``optimizer.lr``.  As in PyTorch, building one records
``optimizer.initial_lr`` (the base rate, kept if already set) and takes its
first step (``last_epoch`` -1 -> 0), which may change the rate already
(``LinearLR`` starts at ``start_factor * lr``); afterwards call ``step()`` once
per epoch, after that epoch's optimizer steps.  The updates are PyTorch's
"chainable" forms, computed from the current ``optimizer.lr`` in Python floats
in the same order, so the sequence of rates is PyTorch's to the last bit.

In ``fit(..., callbacks=[schedule])`` each schedule is a callback that steps
at the end of every epoch; :class:`ReduceLROnPlateau` reads its ``monitor``
value (default ``"val_loss"``) from the epoch's logs.

``state_dict()`` / ``load_state_dict()`` save and restore a schedule (plain
numbers and lists) for resuming.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._checks import positive_int, real_number

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR", "ReduceLROnPlateau"]


def _check_optimizer(optimizer, where):
    lr = getattr(optimizer, "lr", None)
    if not hasattr(optimizer, "step") or isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"{where}: optimizer must be a fastgrad optimizer (with lr and step), got {type(optimizer).__name__}")
    return optimizer


def _check_int(value, name, where, minimum):
    return positive_int(value, name, where, minimum=minimum)


class LRScheduler:
    """Base class (``torch.optim.lr_scheduler.LRScheduler``): subclasses define ``get_lr()``.

    ``last_epoch``: -1 (default) starts a schedule and sets
    ``optimizer.initial_lr`` if unset; >= 0 resumes one and needs
    ``optimizer.initial_lr`` (restored with the optimizer's state).
    """

    #: the state_dict keys besides last_epoch, _step_count, base_lr, _last_lr
    hyperparameters: tuple = ()

    def __init__(self, optimizer, last_epoch=-1):
        where = type(self).__name__
        self.optimizer = _check_optimizer(optimizer, where)
        last_epoch = _check_int(last_epoch, "last_epoch", where, -1)
        if last_epoch == -1:
            if getattr(optimizer, "initial_lr", None) is None:
                optimizer.initial_lr = float(optimizer.lr)
        elif getattr(optimizer, "initial_lr", None) is None:
            raise ValueError(f"{where}: last_epoch={last_epoch} resumes a schedule; it needs optimizer.initial_lr (restore the optimizer)")
        self.base_lr = float(optimizer.initial_lr)
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> float:  # pragma: no cover - every subclass overrides
        raise NotImplementedError(f"{type(self).__name__}.get_lr")

    def step(self) -> None:
        """Advance one epoch: ``last_epoch += 1`` and set ``optimizer.lr`` (no arguments, as PyTorch recommends)."""
        self._step_count += 1
        self.last_epoch += 1
        self.optimizer.lr = self.get_lr()
        self._last_lr = [self.optimizer.lr]

    def get_last_lr(self) -> list:
        """``[lr]``: the rate set by the last step (a one-element list, as PyTorch's one-group result)."""
        return list(self._last_lr)

    def on_epoch_end(self, epoch, logs, model):
        """As a ``fit`` callback: one ``step()`` per epoch."""
        self.step()

    def state_dict(self) -> dict:
        state = {"last_epoch": self.last_epoch, "_step_count": self._step_count, "base_lr": self.base_lr, "_last_lr": list(self._last_lr)}
        state.update({name: getattr(self, name) for name in self.hyperparameters})
        return state

    def load_state_dict(self, state) -> None:
        """Restore a :meth:`state_dict` of the same kind of schedule (checked before anything changes)."""
        where = f"{type(self).__name__}.load_state_dict"
        expected = set(self.state_dict())
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{where}: state must have the keys {sorted(expected)}, got {got}"[:290])
        last_lr = state["_last_lr"]
        if not isinstance(last_lr, (list, tuple)) or len(last_lr) != 1:
            raise ValueError(f"{where}: _last_lr must be a one-element list, got {last_lr!r}"[:290])
        checked = {
            "last_epoch": _check_int(state["last_epoch"], "last_epoch", where, -1),
            "_step_count": _check_int(state["_step_count"], "_step_count", where, 0),
            "base_lr": real_number(state["base_lr"], "base_lr", where, low=0.0),
            "_last_lr": [real_number(last_lr[0], "_last_lr[0]", where, low=0.0)],
        }
        checked.update(self._check_hyperparameters(state, where))
        self.__dict__.update(checked)

    def _check_hyperparameters(self, state, where) -> dict:
        return {}


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs.

    Closed form: ``lr_e = base_lr * gamma ** (e // step_size)``.
    """

    hyperparameters = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = _check_int(step_size, "step_size", "StepLR", 1)
        self.gamma = real_number(gamma, "gamma", "StepLR")
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lr = self.optimizer.lr
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lr
        return lr * self.gamma

    def _check_hyperparameters(self, state, where):
        return {"step_size": _check_int(state["step_size"], "step_size", where, 1), "gamma": real_number(state["gamma"], "gamma", where)}


class MultiStepLR(LRScheduler):
    """Multiply the rate by ``gamma`` at each epoch in ``milestones`` (a repeated milestone applies gamma again).

    Closed form: ``lr_e = base_lr * gamma ** (number of milestones <= e)``.
    """

    hyperparameters = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones = self._check_milestones(milestones, "MultiStepLR")
        self.gamma = real_number(gamma, "gamma", "MultiStepLR")
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check_milestones(milestones, where):
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise TypeError(f"{where}: milestones must be a list of ints, got {type(milestones).__name__}")
        return sorted(_check_int(m, "milestones[i]", where, 0) for m in milestones)

    def get_lr(self):
        lr = self.optimizer.lr
        count = self.milestones.count(self.last_epoch)
        if count == 0:
            return lr
        return lr * self.gamma**count

    def _check_hyperparameters(self, state, where):
        return {"milestones": self._check_milestones(state["milestones"], where), "gamma": real_number(state["gamma"], "gamma", where)}


class ExponentialLR(LRScheduler):
    """Multiply the rate by ``gamma`` every epoch: ``lr_e = base_lr * gamma ** e``."""

    hyperparameters = ("gamma",)

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = real_number(gamma, "gamma", "ExponentialLR")
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return self.optimizer.lr
        return self.optimizer.lr * self.gamma

    def _check_hyperparameters(self, state, where):
        return {"gamma": real_number(state["gamma"], "gamma", where)}


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the base rate to ``eta_min`` over ``T_max`` epochs (SGDR without restarts).

    Closed form: ``lr_e = eta_min + (base_lr - eta_min) * (1 + cos(pi * e / T_max)) / 2``;
    past ``T_max`` the rate rises again along the same cosine, as in PyTorch.
    """

    hyperparameters = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max = _check_int(T_max, "T_max", "CosineAnnealingLR", 1)
        self.eta_min = real_number(eta_min, "eta_min", "CosineAnnealingLR", low=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lr, e, T = self.optimizer.lr, self.last_epoch, self.T_max
        if self._is_initial:
            return lr
        if (e - 1 - T) % (2 * T) == 0:
            return lr + (self.base_lr - self.eta_min) * (1 - math.cos(math.pi / T)) / 2
        return (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - self.eta_min) + self.eta_min

    def _check_hyperparameters(self, state, where):
        return {"T_max": _check_int(state["T_max"], "T_max", where, 1), "eta_min": real_number(state["eta_min"], "eta_min", where, low=0.0)}


class LinearLR(LRScheduler):
    """Linear warm-up (or decay) of the rate's factor from ``start_factor`` to ``end_factor`` over ``total_iters`` epochs.

    Closed form: ``lr_e = base_lr * (start + (end - start) * min(e, total_iters) / total_iters)``.
    """

    hyperparameters = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        self.start_factor, self.end_factor, self.total_iters = self._check_factors(start_factor, end_factor, total_iters, "LinearLR")
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _check_factors(start_factor, end_factor, total_iters, where):
        start = real_number(start_factor, "start_factor", where, low=0.0, high=1.0, low_open=True)
        end = real_number(end_factor, "end_factor", where, low=0.0, high=1.0)
        return start, end, _check_int(total_iters, "total_iters", where, 1)

    def get_lr(self):
        lr, e = self.optimizer.lr, self.last_epoch
        if e == 0:
            return lr * self.start_factor
        if self._is_initial or e > self.total_iters:
            return lr
        delta = self.end_factor - self.start_factor
        return lr * (1.0 + delta / (self.total_iters * self.start_factor + (e - 1) * delta))

    def _check_hyperparameters(self, state, where):
        values = self._check_factors(state["start_factor"], state["end_factor"], state["total_iters"], where)
        return dict(zip(self.hyperparameters, values))


class ReduceLROnPlateau:
    """Multiply the rate by ``factor`` when a metric has stopped improving for more than ``patience`` epochs.

    As ``torch.optim.lr_scheduler.ReduceLROnPlateau``: ``step(metric)`` once per
    epoch; a value is better than ``best`` when (mode min, threshold_mode rel)
    ``a < best * (1 - threshold)`` (abs: ``a < best - threshold``; mode max
    mirrored); after ``patience + 1`` bad epochs in a row the rate becomes
    ``max(lr * factor, min_lr)`` (unchanged if that differs by less than
    ``eps``), then ``cooldown`` epochs are not counted.  As a ``fit`` callback
    it steps with ``logs[monitor]`` (default ``"val_loss"``).
    """

    hyperparameters = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps", "monitor")

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0.0, eps=1e-8, monitor="val_loss"):
        where = "ReduceLROnPlateau"
        self.optimizer = _check_optimizer(optimizer, where)
        self.__dict__.update(self._check(dict(mode=mode, factor=factor, patience=patience, threshold=threshold,
                                              threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr, eps=eps,
                                              monitor=monitor), where))
        self.last_epoch = 0
        self._last_lr = [self.optimizer.lr]
        self.best = math.inf if self.mode == "min" else -math.inf
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @staticmethod
    def _check(config, where) -> dict:
        if config["mode"] not in ("min", "max"):
            raise ValueError(f"{where}: mode must be 'min' or 'max', got {config['mode']!r}"[:290])
        if config["threshold_mode"] not in ("rel", "abs"):
            raise ValueError(f"{where}: threshold_mode must be 'rel' or 'abs', got {config['threshold_mode']!r}"[:290])
        if not isinstance(config["monitor"], str):
            raise TypeError(f"{where}: monitor must be a logs key such as 'val_loss', got {type(config['monitor']).__name__}")
        return {
            "mode": config["mode"],
            "factor": real_number(config["factor"], "factor", where, low=0.0, high=1.0, high_open=True),
            "patience": _check_int(config["patience"], "patience", where, 0),
            "threshold": real_number(config["threshold"], "threshold", where, low=0.0),
            "threshold_mode": config["threshold_mode"],
            "cooldown": _check_int(config["cooldown"], "cooldown", where, 0),
            "min_lr": real_number(config["min_lr"], "min_lr", where, low=0.0),
            "eps": real_number(config["eps"], "eps", where, low=0.0),
            "monitor": config["monitor"],
        }

    def is_better(self, a, best) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def step(self, metrics) -> None:
        """One epoch with the monitored value ``metrics`` (a number)."""
        if isinstance(metrics, (bool, str, bytes)) or not isinstance(metrics, (numbers.Real, np.floating, np.integer)):
            raise TypeError(f"ReduceLROnPlateau.step: metrics must be a number, got {type(metrics).__name__}")
        current = float(metrics)  # NaN counts as a bad epoch, as in PyTorch
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown are not counted
        if self.num_bad_epochs > self.patience:
            old_lr = float(self.optimizer.lr)
            new_lr = max(old_lr * self.factor, self.min_lr)
            if old_lr - new_lr > self.eps:
                self.optimizer.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [self.optimizer.lr]

    def get_last_lr(self) -> list:
        return list(self._last_lr)

    def on_epoch_end(self, epoch, logs, model):
        """As a ``fit`` callback: ``step(logs[monitor])``."""
        if self.monitor not in logs:
            raise KeyError(f"ReduceLROnPlateau: monitor {self.monitor!r} is not in the epoch's logs {sorted(logs)}"
                           " (val_loss needs validation_data)")
        self.step(logs[self.monitor])

    def state_dict(self) -> dict:
        state = {name: getattr(self, name) for name in self.hyperparameters}
        state.update(last_epoch=self.last_epoch, best=self.best, cooldown_counter=self.cooldown_counter,
                     num_bad_epochs=self.num_bad_epochs, _last_lr=list(self._last_lr))
        return state

    def load_state_dict(self, state) -> None:
        where = "ReduceLROnPlateau.load_state_dict"
        expected = set(self.state_dict())
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{where}: state must have the keys {sorted(expected)}, got {got}"[:290])
        checked = self._check({name: state[name] for name in self.hyperparameters}, where)
        best = state["best"]
        if isinstance(best, bool) or not isinstance(best, numbers.Real) or best != best:
            raise ValueError(f"{where}: best must be a number, got {best!r}"[:290])
        checked.update(
            last_epoch=_check_int(state["last_epoch"], "last_epoch", where, 0),
            best=float(best),
            cooldown_counter=_check_int(state["cooldown_counter"], "cooldown_counter", where, 0),
            num_bad_epochs=_check_int(state["num_bad_epochs"], "num_bad_epochs", where, 0),
            _last_lr=[real_number(state["_last_lr"][0], "_last_lr[0]", where, low=0.0)],
        )
        self.__dict__.update(checked)
