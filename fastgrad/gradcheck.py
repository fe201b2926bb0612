"""Finite-difference gradient check of any layer or model.

For a random upstream gradient u (never just sum(y): softmax would pass that
trivially, its gradient of sum(y) is 0), the scalar L = <u, f(x)> has
dL/dx = backward(u) and dL/dparam = the accumulated grads.  Each element is
compared with the central difference (L(t + eps) - L(t - eps)) / (2 eps),
computed in float64 on a float64 copy of the model (the original model, its
parameters and gradients are not touched).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._checks import as_array, real_number
from .io import build
from .layers.base import Layer


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with finite differences; ``.report`` has the table."""

    def __init__(self, report):
        super().__init__(f"gradient check failed:\n{report}")
        self.report = report


@dataclass
class TensorCheck:
    name: str
    shape: tuple
    checked: int
    max_abs_err: float
    max_rel_err: float
    ok: bool


@dataclass
class GradcheckReport:
    model: str
    eps: float
    atol: float
    rtol: float
    rows: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def max_abs_err(self) -> float:
        return max((r.max_abs_err for r in self.rows), default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max((r.max_rel_err for r in self.rows), default=0.0)

    def __str__(self) -> str:
        head = f"{self.model}: eps={self.eps:g} atol={self.atol:g} rtol={self.rtol:g}"
        lines = [head, f"  {'tensor':<14}{'shape':<18}{'points':>7}  {'max abs err':>11}  {'max rel err':>11}  ok"]
        for r in self.rows:
            lines.append(
                f"  {r.name:<14}{str(r.shape):<18}{r.checked:>7}  {r.max_abs_err:>11.2e}  {r.max_rel_err:>11.2e}  {'yes' if r.ok else 'NO'}"
            )
        return "\n".join(lines)


def float64_copy(model: Layer) -> Layer:
    """A float64 clone of a layer/Sequential with the same parameter values."""
    config = model.get_config()
    if type(model).__name__ == "Sequential":
        for item in config["layers"]:
            if "dtype" in item["config"]:
                item["config"]["dtype"] = "float64"
    elif "dtype" in config:
        config["dtype"] = "float64"
    clone = build(type(model).__name__, config, where="gradcheck")
    for name, arr in clone.params.items():
        arr[...] = model.params[name]
    return clone


def _compare(name, analytic, loss, tensor, eps, atol, rtol, rng, max_points):
    flat = tensor.reshape(-1)
    aflat = analytic.reshape(-1)
    idx = np.arange(flat.size)
    if max_points is not None and flat.size > max_points:
        idx = np.sort(rng.choice(flat.size, size=max_points, replace=False))
    abs_err = rel_err = 0.0
    ok = True
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        up = loss()
        flat[i] = old - eps
        down = loss()
        flat[i] = old
        numeric = (up - down) / (2 * eps)
        err = abs(aflat[i] - numeric)
        abs_err = max(abs_err, err)
        rel_err = max(rel_err, err / max(abs(numeric), atol))
        if not err <= atol + rtol * abs(numeric):
            ok = False
    return TensorCheck(name, tuple(tensor.shape), int(idx.size), float(abs_err), float(rel_err), ok)


def gradcheck(layer_or_model, x, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, max_points=None, raise_on_failure=True):
    """Check backward() of a layer or model against central differences in float64.

    Checks the input gradient and every parameter gradient under a random
    upstream gradient.  Passes when |analytic - numeric| <= atol + rtol |numeric|
    for every checked element.  ``max_points`` limits the elements checked per
    tensor (random subset) for large layers.  Returns a :class:`GradcheckReport`
    (printable table); raises :class:`GradcheckError` on failure unless
    ``raise_on_failure=False``.
    """
    where = "gradcheck"
    if not isinstance(layer_or_model, Layer):
        raise TypeError(f"{where}: layer_or_model must be a fastgrad Layer or Sequential, got {type(layer_or_model).__name__}")
    eps = real_number(eps, "eps", where, low=0.0, low_open=True)
    atol = real_number(atol, "atol", where, low=0.0)
    rtol = real_number(rtol, "rtol", where, low=0.0)
    model = float64_copy(layer_or_model)
    x = np.array(as_array(x, "x", where), dtype=np.float64, copy=True)
    rng = np.random.default_rng(seed)

    y = model.forward(x)
    u = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = np.array(model.backward(u), dtype=np.float64, copy=True)
    grads = {name: g.copy() for name, g in model.grads.items()}

    def loss():
        return float(np.sum(u * model.forward(x)))

    report = GradcheckReport(type(layer_or_model).__name__, eps, atol, rtol)
    report.rows.append(_compare("x", dx, loss, x, eps, atol, rtol, rng, max_points))
    for name, p in model.params.items():
        report.rows.append(_compare(name, grads[name], loss, p, eps, atol, rtol, rng, max_points))
    if raise_on_failure and not report.ok:
        raise GradcheckError(report)
    return report
