"""Gradient checks: a layer or model exactly as it is, or a function with its hand-written VJP.

For a random upstream gradient u (never just sum(y): softmax would pass that
trivially, its gradient of sum(y) is 0), the scalar L = <u, f(x)> has
dL/dx = backward(u) and dL/dparam = the accumulated grads.  Two ways to compare
them with central differences of L, both in float64:

* ``mode="full"``: every element t_i of every tensor t (x and each parameter),
  ``dL/dt_i  ~  (L(t + eps e_i) - L(t - eps e_i)) / 2 eps``, two forwards per element;
* ``mode="directional"``: a few random directions v per tensor (standard normal
  entries), ``<v, dL/dt>  ~  (L(t + eps v) - L(t - eps v)) / 2 eps``, two forwards
  per direction whatever the tensor's size: the check for layers too large
  for the full one.  Each tensor is perturbed on its own, so an error in one
  cannot be hidden by another.

A value passes when ``|analytic - numeric| <= atol + rtol |numeric|``.

:func:`gradcheck` checks the very object it is given: its class, its instance
state and any method replaced on the instance.  For the duration of the check
the floating arrays of the object and of its sub-layers (``params``, ``grads``,
``buffers`` entries and array attributes) are float64 copies and their
``dtype`` is float64; afterwards every attribute and dict entry is put back to
the original object, so parameters, gradients, dtype and saved forward caches
are bitwise what they were, also when the check fails or the layer raises.
:func:`gradcheck_fn` checks a plain function and its vector-Jacobian product.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ._checks import as_array, as_indices, positive_int, real_number
from .layers.base import Layer, sublayers, takes_indices

MODES = ("full", "directional")
#: dicts of a layer whose floating entries are float64 during a check
STATE_DICTS = ("_params", "_grads", "_buffers")  # where a layer keeps its own arrays (layers.base)


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with finite differences; ``.report`` has the table."""

    def __init__(self, report):
        super().__init__(f"gradient check failed:\n{report}")
        self.report = report


@dataclass
class TensorCheck:
    """One row of the report: ``checked`` elements (full) or directions (directional) of one tensor."""

    name: str
    shape: tuple
    checked: int
    max_abs_err: float
    max_rel_err: float
    ok: bool


@dataclass
class GradcheckReport:
    """One row per checked tensor (``x`` first, then each parameter); ``accumulation`` for layers.

    ``accumulation`` compares the gradients after two forward/backward passes
    with twice those after one (``backward`` must add into ``grads``); None for
    functions and for layers without parameters.  ``ok`` needs every row and it.
    """

    model: str
    eps: float
    atol: float
    rtol: float
    rows: list = field(default_factory=list)
    mode: str = "full"
    accumulation: TensorCheck | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.checks())

    def checks(self) -> list:
        """The rows, then the accumulation check when there is one."""
        return self.rows + ([self.accumulation] if self.accumulation is not None else [])

    @property
    def max_abs_err(self) -> float:
        return max((r.max_abs_err for r in self.rows), default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max((r.max_rel_err for r in self.rows), default=0.0)

    def __str__(self) -> str:
        head = f"{self.model}: {self.mode} check, eps={self.eps:g} atol={self.atol:g} rtol={self.rtol:g}"
        what = "points" if self.mode == "full" else "dirs"
        lines = [head, f"  {'tensor':<14}{'shape':<18}{what:>7}  {'max abs err':>11}  {'max rel err':>11}  ok"]
        for r in self.checks():
            lines.append(
                f"  {r.name:<14}{str(r.shape):<18}{r.checked:>7}  {r.max_abs_err:>11.2e}  {r.max_rel_err:>11.2e}  {'yes' if r.ok else 'NO'}"
            )
        return "\n".join(lines)


class _Options(NamedTuple):
    eps: float
    atol: float
    rtol: float
    mode: str
    directions: int
    max_points: int | None


def _options(where, eps, atol, rtol, mode, directions, max_points) -> _Options:
    eps = real_number(eps, "eps", where, low=0.0, low_open=True)
    atol = real_number(atol, "atol", where, low=0.0)
    rtol = real_number(rtol, "rtol", where, low=0.0)
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be 'full' or 'directional', got {mode!r}"[:290])
    directions = positive_int(directions, "directions", where)
    if max_points is not None:
        max_points = positive_int(max_points, "max_points", where)
    return _Options(eps, atol, rtol, mode, directions, max_points)


# -- the comparison, shared by layers and functions ---------------------------------
def _row(name, shape, analytic, numeric, opts) -> TensorCheck:
    """Apply |a - n| <= atol + rtol |n| to paired values; NaN anywhere fails."""
    analytic = np.asarray(analytic, dtype=np.float64).reshape(-1)
    numeric = np.asarray(numeric, dtype=np.float64).reshape(-1)
    err = np.abs(analytic - numeric)
    ok = bool(np.all(err <= opts.atol + opts.rtol * np.abs(numeric)))
    if not err.size:
        return TensorCheck(name, tuple(shape), 0, 0.0, 0.0, ok)
    floor = max(opts.atol, np.finfo(np.float64).tiny)
    rel = err / np.maximum(np.abs(numeric), floor)
    return TensorCheck(name, tuple(shape), int(err.size), float(np.max(err)), float(np.max(rel)), ok)


def _check_tensor(name, tensor, analytic, loss, rng, opts) -> TensorCheck:
    """Central differences of ``loss()`` while ``tensor`` (a float64 array the check owns) is perturbed in place."""
    flat = tensor.reshape(-1)  # a view: every tensor here is a C-contiguous copy
    grad = np.asarray(analytic, dtype=np.float64).reshape(-1)
    eps = opts.eps
    if opts.mode == "directional":
        # <v, dL/dt> against (L(t + eps v) - L(t - eps v)) / 2 eps
        origin = flat.copy()
        directions = rng.standard_normal((opts.directions, flat.size))
        numeric = np.empty(opts.directions)
        for k, v in enumerate(directions):
            flat[:] = origin + eps * v
            up = loss()
            flat[:] = origin - eps * v
            down = loss()
            flat[:] = origin
            numeric[k] = (up - down) / (2 * eps)
        return _row(name, tensor.shape, directions @ grad, numeric, opts)
    idx = np.arange(flat.size)
    if opts.max_points is not None and flat.size > opts.max_points:
        idx = np.sort(rng.choice(flat.size, size=opts.max_points, replace=False))
    numeric = np.empty(idx.size)
    for k, i in enumerate(idx):
        # dL/dt_i against (L(t + eps e_i) - L(t - eps e_i)) / 2 eps
        old = flat[i]
        flat[i] = old + eps
        up = loss()
        flat[i] = old - eps
        down = loss()
        flat[i] = old
        numeric[k] = (up - down) / (2 * eps)
    return _row(name, tensor.shape, grad[idx], numeric, opts)


# -- the very object, in float64 for the duration of the check ----------------------
def _is_float_array(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


@contextmanager
def float64_in_place(obj: Layer):
    """Run ``obj`` (and its sub-layers) in float64 inside the block, then put everything back.

    Every floating array held in a layer's ``params`` / ``grads`` / ``buffers``
    dicts or directly as an attribute is replaced by a float64 copy (one copy per
    array object, so an attribute aliasing a parameter stays an alias, and tied
    weights stay tied) and ``dtype`` becomes float64, so the layer's own input
    conversion runs in float64.  On exit, also after an exception, the dicts get
    their original entries back and each layer's attributes are rebound to the
    original objects (new attributes, e.g. a cache set during the block, are
    dropped): the original arrays are never written.
    """
    copies = {}

    def cast(arr):
        if id(arr) not in copies:
            copies[id(arr)] = (arr, np.array(arr, dtype=np.float64, order="C", copy=True))  # keeps arr alive: ids stay unique
        return copies[id(arr)][1]

    saved = []
    try:
        for layer in sublayers(obj):
            attrs = dict(vars(layer))
            dicts = {key: dict(attrs[key]) for key in STATE_DICTS if isinstance(attrs.get(key), dict)}
            saved.append((layer, attrs, dicts))
        for layer, attrs, dicts in saved:
            for key, entries in dicts.items():
                live = attrs[key]  # the layer's own dict object: code holding it sees the copies too
                for name, value in entries.items():
                    if _is_float_array(value):
                        live[name] = cast(value)
            state = vars(layer)
            for name, value in attrs.items():
                if _is_float_array(value):
                    state[name] = cast(value)
            if "dtype" in attrs:
                state["dtype"] = np.dtype(np.float64)
        yield obj
    finally:
        for layer, attrs, dicts in saved:
            for key, entries in dicts.items():
                attrs[key].clear()
                attrs[key].update(entries)
            state = vars(layer)
            state.clear()
            state.update(attrs)


def _float64_output(y, what: str, where: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype != np.float64:
        got = f"{y.dtype} array" if isinstance(y, np.ndarray) else type(y).__name__
        raise TypeError(
            f"{where}: {what} returned {got} inside the float64 check; it must return a float64 array "
            "(convert with self.dtype, which is float64 during the check, not a fixed dtype)"[:295]
        )
    return y


def _protocol(model: Layer, name: str, where: str) -> None:
    """The Layer protocol the check relies on: params and grads dicts with the same keys and shapes."""
    params = getattr(model, "params", None)
    grads = getattr(model, "grads", None)
    if not isinstance(params, dict) or not isinstance(grads, dict):
        raise TypeError(f"{where}: {name} has no params/grads dicts; call super().__init__(dtype) in {name}.__init__")
    for key, p in params.items():
        g = grads.get(key)
        if not isinstance(g, np.ndarray) or g.shape != np.shape(p):
            raise ValueError(
                f"{where}: {name}.grads[{key!r}] must be an array shaped like params[{key!r}]; register parameters with add_param"
            )
    if set(grads) != set(params):
        raise ValueError(f"{where}: {name}.grads has keys {sorted(grads)} but params has {sorted(params)}"[:290])


def gradcheck(
    layer_or_model,
    x,
    eps=1e-6,
    atol=1e-5,
    rtol=1e-3,
    seed=0,
    max_points=None,
    raise_on_failure=True,
    mode="full",
    directions=4,
):
    """Check ``backward()`` of this very layer or model against central differences in float64.

    ``layer_or_model``: any :class:`Layer` (built-in, ``Sequential`` or your own),
    checked as it is, including methods replaced on the instance; it runs in
    float64 during the check and is left bitwise unchanged (params, grads,
    dtype, caches).  Rows: the input gradient ``x`` (none when the model
    reads integer indices, e.g. starts with an Embedding) and every parameter
    gradient; then ``report.accumulation``: a second forward/backward must
    double the gradients (backward adds into ``grads``).  ``mode``: ``"full"`` (every element, or a
    random ``max_points`` per tensor) or ``"directional"`` (``directions``
    random directions per tensor, cost independent of size).  Returns a
    :class:`GradcheckReport` (printable table); raises :class:`GradcheckError`
    on failure unless ``raise_on_failure=False``.
    """
    where = "gradcheck"
    if not isinstance(layer_or_model, Layer):
        raise TypeError(f"{where}: layer_or_model must be a fastgrad Layer or Sequential, got {type(layer_or_model).__name__}")
    opts = _options(where, eps, atol, rtol, mode, directions, max_points)
    model = layer_or_model
    name = type(model).__name__
    _protocol(model, name, where)
    indices = takes_indices(model)
    if indices:  # an Embedding first: x is integer indices, with no gradient of its own (no x row)
        x = as_indices(x, "x", where)
    else:
        x = np.array(as_array(x, "x", where), dtype=np.float64, order="C", copy=True)
    rng = np.random.default_rng(seed)
    report = GradcheckReport(name, opts.eps, opts.atol, opts.rtol, mode=opts.mode)
    with float64_in_place(model):
        y = _float64_output(model.forward(x), f"{name}.forward", where)
        u = rng.standard_normal(y.shape)
        model.zero_grad()
        dx = model.backward(u.copy())
        if indices:
            dx = None
        elif not isinstance(dx, np.ndarray) or dx.shape != x.shape:
            got = dx.shape if isinstance(dx, np.ndarray) else type(dx).__name__
            raise ValueError(f"{where}: {name}.backward must return dL/dx shaped like x {x.shape}, got {got}")
        else:
            dx = np.array(dx, dtype=np.float64, copy=True)  # may be a buffer the next call reuses
        grads = {key: np.array(g, dtype=np.float64) for key, g in model.grads.items()}
        twice = None
        if grads:
            model.forward(x)  # afresh: a backward may consume its cache
            model.backward(u.copy())
            twice = {key: np.array(g, dtype=np.float64) for key, g in model.grads.items()}

        def loss():
            return float(np.sum(u * model.forward(x)))

        if not indices:
            report.rows.append(_check_tensor("x", x, dx, loss, rng, opts))
        for key, p in model.params.items():
            report.rows.append(_check_tensor(key, p, grads[key], loss, rng, opts))
    if twice is not None:
        # backward accumulates: after two calls from zero the grads are twice one call's
        doubled = np.concatenate([2 * grads[key].reshape(-1) for key in grads])
        got = np.concatenate([twice[key].reshape(-1) for key in grads])
        report.accumulation = _row("accumulation", (), got, doubled, opts)
    if raise_on_failure and not report.ok:
        raise GradcheckError(report)
    return report


# -- plain functions and their vector-Jacobian products -----------------------------
def _leaves(y, where: str, what: str) -> list:
    """The arrays of an output that is an array or a (nested) tuple/list of arrays; None entries skipped."""
    if isinstance(y, np.ndarray):
        return [_float64_output(y, what, where)]
    if isinstance(y, (tuple, list)):
        return [leaf for item in y if item is not None for leaf in _leaves(item, where, what)]
    raise TypeError(f"{where}: {what} must return an array or a tuple of arrays, got {type(y).__name__}")


def _shaped_like(y, leaves):
    """Rebuild ``y``'s structure with the next arrays from the iterator ``leaves`` (None stays None)."""
    if isinstance(y, np.ndarray):
        return next(leaves)
    return type(y)(None if item is None else _shaped_like(item, leaves) for item in y)


def _arg_names(f, n: int) -> list:
    """The names of f's first n positional parameters (``x, W, b``), else ``inputs[i]``."""
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in params[:n] if p.kind in positional]
    return names if len(names) == n else [f"inputs[{i}]" for i in range(n)]


def gradcheck_fn(
    f,
    vjp,
    inputs,
    eps=1e-6,
    atol=1e-5,
    rtol=1e-3,
    seed=0,
    max_points=None,
    raise_on_failure=True,
    mode="full",
    directions=4,
    with_cache=False,
):
    """Check a function's hand-written vector-Jacobian product against central differences in float64.

    ``f(*inputs) -> y`` (an array or a tuple of arrays) and ``vjp(dy, *inputs)
    -> (dL/dinput, ...)``, one gradient per input (a single array for one
    input), where ``dy`` has y's structure.  With ``with_cache=True`` the
    functional API's convention: ``f(*inputs) -> (y, cache)`` and
    ``vjp(dy, cache)``, e.g. ``gradcheck_fn(lambda x, W, b: F.dense_forward(x,
    W, b, "tanh"), F.dense_backward, (x, W, b), with_cache=True)``.
    ``inputs``: an array or a sequence of arrays; None entries are passed
    through unchecked (their gradient is ignored).  The inputs are copied to
    float64 and never modified.  Rows are named after f's parameters.
    Options and the report as :func:`gradcheck`.
    """
    where = "gradcheck_fn"
    for label, fn in (("f", f), ("vjp", vjp)):
        if not callable(fn):
            raise TypeError(f"{where}: {label} must be callable, got {type(fn).__name__}")
    if not isinstance(with_cache, (bool, np.bool_)):
        raise TypeError(f"{where}: with_cache must be True or False, got {type(with_cache).__name__}")
    opts = _options(where, eps, atol, rtol, mode, directions, max_points)
    items = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    if all(a is None for a in items):
        raise ValueError(f"{where}: inputs must hold at least one array, got {len(items)} None")
    xs = [
        None if a is None else np.array(as_array(a, f"inputs[{i}]", where), dtype=np.float64, order="C", copy=True)
        for i, a in enumerate(items)
    ]
    names = _arg_names(f, len(xs))
    fname = getattr(f, "__qualname__", type(f).__name__)

    def run():
        out = f(*xs)
        if not with_cache:
            return out, None
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"{where}: with_cache=True needs f to return (y, cache), got {type(out).__name__}")
        return out

    rng = np.random.default_rng(seed)
    y, cache = run()
    us = [rng.standard_normal(leaf.shape) for leaf in _leaves(y, where, fname)]
    dy = _shaped_like(y, iter([u.copy() for u in us]))
    grads = vjp(dy, cache) if with_cache else vjp(dy, *xs)
    if len(xs) == 1 and isinstance(grads, np.ndarray):
        grads = (grads,)
    if not isinstance(grads, (tuple, list)) or len(grads) != len(xs):
        got = len(grads) if isinstance(grads, (tuple, list)) else type(grads).__name__
        raise ValueError(f"{where}: vjp must return one gradient per input ({len(xs)}: {', '.join(names)}), got {got}"[:290])
    for x, g, label in zip(xs, grads, names):
        if x is not None and (not isinstance(g, np.ndarray) or g.shape != x.shape):
            got = g.shape if isinstance(g, np.ndarray) else type(g).__name__
            raise ValueError(f"{where}: vjp's gradient for {label} must be an array of shape {x.shape}, got {got}")

    def loss():
        return float(sum(np.sum(u * leaf) for u, leaf in zip(us, _leaves(run()[0], where, fname))))

    report = GradcheckReport(fname, opts.eps, opts.atol, opts.rtol, mode=opts.mode)
    for x, g, label in zip(xs, grads, names):
        if x is not None:
            report.rows.append(_check_tensor(label, x, g, loss, rng, opts))
    if raise_on_failure and not report.ok:
        raise GradcheckError(report)
    return report
