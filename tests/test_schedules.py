"""LR schedules: PyTorch's closed forms (always), PyTorch's own sequences (when torch is installed), state, fit."""

import math

import numpy as np
import pytest
from needs import needs

import fastgrad as fg

LR = 0.1
EPOCHS = 25


def _opt(lr=LR):
    return fg.SGD(fg.Dense(2, 1, dtype=np.float64, seed=0), lr)


def _rates(schedule, opt, epochs=EPOCHS):
    """The lr of epochs 0..epochs-1: the rate in force during each epoch, stepped after it."""
    rates = []
    for _ in range(epochs):
        rates.append(opt.lr)
        schedule.step()
    return rates


# the closed forms of the PyTorch documentation: lr of epoch e
CASES = {
    "step": (lambda o: fg.StepLR(o, step_size=4, gamma=0.5), lambda e: LR * 0.5 ** (e // 4)),
    "step_default_gamma": (lambda o: fg.StepLR(o, 3), lambda e: LR * 0.1 ** (e // 3)),
    "multistep": (lambda o: fg.MultiStepLR(o, milestones=[3, 7, 7, 12], gamma=0.3),
                  lambda e: LR * 0.3 ** sum(m <= e for m in [3, 7, 7, 12])),
    "exponential": (lambda o: fg.ExponentialLR(o, gamma=0.9), lambda e: LR * 0.9**e),
    "cosine": (lambda o: fg.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
               lambda e: 0.001 + (LR - 0.001) * (1 + math.cos(math.pi * e / 10)) / 2),
    "cosine_default_eta": (lambda o: fg.CosineAnnealingLR(o, T_max=7), lambda e: LR * (1 + math.cos(math.pi * e / 7)) / 2),
    "linear_warmup": (lambda o: fg.LinearLR(o, start_factor=0.25, total_iters=6),
                      lambda e: LR * (0.25 + (1 - 0.25) * min(e, 6) / 6)),
    "linear_defaults": (lambda o: fg.LinearLR(o), lambda e: LR * (1 / 3 + (1 - 1 / 3) * min(e, 5) / 5)),
    "linear_decay": (lambda o: fg.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=8),
                     lambda e: LR * (1.0 + (0.2 - 1.0) * min(e, 8) / 8)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_follows_the_closed_form(name):
    make, formula = CASES[name]
    opt = _opt()
    got = _rates(make(opt), opt)
    np.testing.assert_allclose(got, [formula(e) for e in range(EPOCHS)], rtol=1e-12, atol=1e-15)
    assert opt.initial_lr == LR


def _torch_rates(torch, make_t, epochs=EPOCHS, metrics=None):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=LR)
    sched = make_t(opt)
    rates = []
    for e in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[e])
    return rates


TORCH = {
    "step": lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5),
    "step_default_gamma": lambda t, o: t.optim.lr_scheduler.StepLR(o, 3),
    "multistep": lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 7, 7, 12], gamma=0.3),
    "exponential": lambda t, o: t.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
    "cosine": lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
    "cosine_default_eta": lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7),
    "linear_warmup": lambda t, o: t.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=6),
    "linear_defaults": lambda t, o: t.optim.lr_scheduler.LinearLR(o),
    "linear_decay": lambda t, o: t.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=8),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_is_pytorchs_sequence_bitwise(name):
    torch = needs("torch")
    opt = _opt()
    ours = _rates(CASES[name][0](opt), opt)
    theirs = _torch_rates(torch, lambda o: TORCH[name](torch, o))
    assert ours == theirs  # same chainable float arithmetic: equal to the last bit


# a metric that improves, stalls (within and beyond the threshold), improves again, and is NaN once
METRIC = [1.0, 0.9, 0.8999, 0.95, 0.91, 0.9, 0.89, 0.7, 0.7, 0.71, 0.72, 0.73, float("nan"), 0.5, 0.5, 0.5, 0.5, 0.49995, 0.4,
          0.41, 0.42, 0.43, 0.44, 0.45, 0.46]
PLATEAU = {
    "defaults_patience2": dict(patience=2),
    "abs_cooldown_minlr": dict(patience=1, threshold=0.05, threshold_mode="abs", cooldown=2, min_lr=0.004, factor=0.5),
    "max_mode": dict(mode="max", patience=1, factor=0.2),
    "max_abs": dict(mode="max", patience=0, threshold=0.01, threshold_mode="abs", factor=0.5, eps=0.02),
}


def _plateau_reference(metrics, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel", cooldown=0, min_lr=0.0,
                       eps=1e-8):
    """The documented algorithm of torch's ReduceLROnPlateau, written out: lr of each epoch."""
    lr, best, bad, cool, rates = LR, math.inf if mode == "min" else -math.inf, 0, 0, []
    for m in metrics:
        rates.append(lr)
        if mode == "min":
            better = m < best * (1 - threshold) if threshold_mode == "rel" else m < best - threshold
        else:
            better = m > best * (1 + threshold) if threshold_mode == "rel" else m > best + threshold
        if better:
            best, bad = m, 0
        else:
            bad += 1
        if cool > 0:
            cool -= 1
            bad = 0
        if bad > patience:
            new = max(lr * factor, min_lr)
            if lr - new > eps:
                lr = new
            cool, bad = cooldown, 0
    return rates


def _plateau_rates(kwargs):
    """(metrics, the lr of each epoch) for fastgrad's ReduceLROnPlateau stepped with METRIC (negated in max mode)."""
    metrics = METRIC if kwargs.get("mode") != "max" else [-m for m in METRIC]
    opt = _opt()
    sched = fg.ReduceLROnPlateau(opt, **kwargs)
    rates = []
    for m in metrics:
        rates.append(opt.lr)
        sched.step(m)
    return metrics, rates


@pytest.mark.parametrize("name", sorted(PLATEAU))
def test_reduce_on_plateau_follows_the_documented_rule(name):
    metrics, rates = _plateau_rates(PLATEAU[name])
    assert rates == _plateau_reference(metrics, **PLATEAU[name])
    assert len(set(rates)) > 1, "the case must reduce the rate at least once"


@pytest.mark.parametrize("name", sorted(PLATEAU))
def test_reduce_on_plateau_is_pytorchs_sequence(name):
    torch = needs("torch")
    metrics, rates = _plateau_rates(PLATEAU[name])
    assert rates == _torch_rates(torch, lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, **PLATEAU[name]), len(metrics), metrics)


def test_plateau_defaults_are_pytorchs():
    sched = fg.ReduceLROnPlateau(_opt())
    assert (sched.mode, sched.factor, sched.patience, sched.threshold, sched.threshold_mode, sched.cooldown, sched.min_lr,
            sched.eps) == ("min", 0.1, 10, 1e-4, "rel", 0, 0.0, 1e-8)


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_resumes_the_sequence(name):
    make = CASES[name][0]
    opt = _opt()
    sched = make(opt)
    head = _rates(sched, opt, 9)
    saved_opt, saved = opt.state_dict(), sched.state_dict()
    tail = _rates(sched, opt, 9)
    # a new optimizer and schedule: build the schedule, then restore both (as after load_checkpoint)
    opt2 = _opt(0.5)
    sched2 = make(opt2)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved)
    assert _rates(sched2, opt2, 9) == tail
    assert head[0] == pytest.approx(CASES[name][1](0), rel=1e-12)


def test_schedules_reject_bad_arguments():
    opt = _opt()
    for call, exc, words in [
        (lambda: fg.StepLR(opt, 0), ValueError, ["step_size"]),
        (lambda: fg.StepLR("opt", 2), TypeError, ["optimizer"]),
        (lambda: fg.LinearLR(opt, start_factor=0), ValueError, ["start_factor"]),
        (lambda: fg.LinearLR(opt, end_factor=1.5), ValueError, ["end_factor"]),
        (lambda: fg.MultiStepLR(opt, 3), TypeError, ["milestones"]),
        (lambda: fg.CosineAnnealingLR(opt, T_max=0), ValueError, ["T_max"]),
        (lambda: fg.ReduceLROnPlateau(opt, factor=1.0), ValueError, ["factor"]),
        (lambda: fg.ReduceLROnPlateau(opt, mode="up"), ValueError, ["mode"]),
        (lambda: fg.ExponentialLR(_opt(), gamma=0.5, last_epoch=3), ValueError, ["initial_lr"]),
        (lambda: fg.ReduceLROnPlateau(opt).step("low"), TypeError, ["metrics"]),
    ]:
        with pytest.raises(exc) as info:
            call()
        assert all(w in str(info.value) for w in words), str(info.value)


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return x, (x[:, 0] - x[:, 1] > 0).astype(np.int64)


def test_schedules_are_fit_callbacks_and_logs_carry_the_rate():
    x, y = _data()
    model = fg.Sequential(fg.Dense(4, 2, dtype=np.float64, seed=0))
    opt = fg.SGD(model, 0.2)
    seen = []

    class Record:
        def on_epoch_end(self, epoch, logs, model):
            seen.append(logs["lr"])

    model.fit(x, y, fg.CrossEntropyLoss(), opt, epochs=5, batch_size=16, progress=False, callbacks=[fg.StepLR(opt, 2, 0.5), Record()])
    assert seen == [0.2, 0.2, 0.1, 0.1, 0.05] and opt.lr == 0.05


def test_plateau_in_fit_reads_the_monitored_value():
    x, y = _data()
    model = fg.Sequential(fg.Dense(4, 2, dtype=np.float64, seed=0))
    opt = fg.SGD(model, 0.2)
    # monitor "accuracy" in max mode with patience 0 and a huge threshold: epoch 0 beats -inf, later epochs are "bad" and reduce
    sched = fg.ReduceLROnPlateau(opt, mode="max", patience=0, threshold=10.0, threshold_mode="abs", factor=0.5, monitor="accuracy")
    model.fit(x, y, fg.CrossEntropyLoss(), opt, epochs=3, batch_size=16, progress=False, callbacks=[sched])
    assert opt.lr == pytest.approx(0.2 * 0.5**2)
    with pytest.raises(KeyError, match="val_loss"):
        model.fit(x, y, fg.CrossEntropyLoss(), opt, epochs=1, progress=False, callbacks=[fg.ReduceLROnPlateau(opt)])
