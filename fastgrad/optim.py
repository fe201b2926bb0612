"""Optimizers with torch.optim's exact update rules, and gradient clipping.

An optimizer holds what it trains: a layer, a Sequential, or a list of layers
(to train part of a model).  It updates the trainable parameters in place, so
the arrays the layers own are the ones that change; layers with
``trainable = False`` are skipped.  ``state_dict()`` / ``load_state_dict()``
save and restore everything a resumed run needs (hyperparameters, learning
rate, step count, momentum buffers / Adam moments).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import _jit
from ._checks import positive_int, real_number
from .kernels import optim as kopt
from .layers.base import Layer, own_arrays, walk

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NO_BUFFER = {dt: np.zeros(0, dt) for dt in _FLOATS}
#: the compiled entry point of each (twin, dtype) of the update kernels (see _update)
_ENTRIES: dict = {}


def _compiled(*arrays) -> bool:
    """True when the update kernels can work on these arrays in place (the layers' own always can):
    float32/float64 of one dtype, C-contiguous, writable.  Anything else takes the NumPy form."""
    dt = arrays[0].dtype
    return dt in _FLOATS and all(a.dtype == dt and a.flags.c_contiguous and a.flags.writeable for a in arrays)


def _update(k, args) -> None:
    """Run update kernel k over the flat arrays of args, through the exact overload once it is known."""
    fn = _jit.pick(k, args[0].size)
    if not hasattr(fn, "overloads"):  # a locked / dynamic wrapper, or NUMBA_DISABLE_JIT
        fn(*args)
        return
    key = (fn, args[0].dtype)
    entry = _ENTRIES.get(key)
    if entry is None:
        entry = _ENTRIES[key] = _jit.exact(fn, args)
    entry(*args)


def named_parameters(source, trainable_only=True, prefix=""):
    """``[(name, param, grad)]`` of a Layer, a Sequential or a list of layers, in ``params`` order.

    Names are those of ``model.params`` ("0.W", "1.b", a block's child
    "0.inner.W", nested "0.1.W"); for a list of layers the list index comes
    first.  The layer tree is the one :func:`fastgrad.layers.base.walk` sees.
    ``trainable_only`` leaves out the parameters of layers with
    ``trainable = False`` and of everything inside a frozen layer.
    """
    if isinstance(source, (list, tuple)):
        return [item for i, layer in enumerate(source) for item in named_parameters(layer, trainable_only, f"{prefix}{i}.")]
    if not isinstance(source, Layer):  # a duck-typed object with params and grads dicts
        grads = source.grads
        return [(prefix + name, p, grads[name]) for name, p in source.params.items()]
    out = []
    for path, node in walk(source, skip_frozen=trainable_only):
        grads = own_arrays(node, "grads")
        head = f"{prefix}{path}." if path else prefix
        out.extend((head + name, p, grads[name]) for name, p in own_arrays(node, "params").items())
    return out


def _check_source(source, where):
    """A Layer/Sequential or a list of them, holding at least one parameter."""
    if isinstance(source, (list, tuple)):
        for i, item in enumerate(source):
            if not (hasattr(item, "params") and hasattr(item, "grads")):
                raise TypeError(f"{where}: model[{i}] must be a Layer (with params and grads), got {type(item).__name__}")
    elif not (hasattr(source, "params") and hasattr(source, "grads")):
        raise TypeError(
            f"{where}: model must be a Layer, a Sequential or a list of layers (with params and grads), got {type(source).__name__}"
        )
    if not named_parameters(source, trainable_only=False):
        raise ValueError(f"{where}: model has no parameters to optimise")


class Optimizer:
    """Base class: ``model`` (a Layer, a Sequential or a list of layers) and the learning rate ``lr``.

    ``params`` / ``grads`` are the trainable parameters it updates (frozen
    layers are skipped at every step, so ``layer.trainable`` may change
    between steps).  Subclasses define ``hyperparameters``, ``buffer_names``,
    ``check_config`` (the one validation of their hyperparameters) and ``step()``.
    """

    #: every optimizer class by name, so that a checkpoint can rebuild one
    registry: dict[str, type] = {}
    #: the constructor's keyword arguments (get_config / state_dict)
    hyperparameters: tuple = ("lr",)
    #: the per-parameter buffers kept in ``state[name]``
    buffer_names: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Optimizer.registry[cls.__name__] = cls

    def __init__(self, model, lr, **config):
        where = type(self).__name__
        _check_source(model, where)
        self.model = model
        self.__dict__.update(self.check_config({"lr": lr, **config}, where))
        #: the lr when the first LR schedule was attached (as torch's group["initial_lr"])
        self.initial_lr = None
        self.state: dict[str, dict] = {}
        self.steps = 0

    def check_config(self, config: dict, where: str) -> dict:
        """Validated hyperparameters (subclasses extend with their own)."""
        return {"lr": real_number(config["lr"], "lr", where, low=0.0, low_open=True)}

    def get_config(self) -> dict:
        """The hyperparameters, current ``lr`` included (JSON-able): ``type(opt)(model, **opt.get_config())``."""
        return {name: getattr(self, name) for name in self.hyperparameters}

    @property
    def params(self) -> dict:
        """The trainable parameters this optimizer updates, ``{name: array}`` (the layers' own arrays)."""
        return {name: p for name, p, _ in named_parameters(self.model)}

    @property
    def grads(self) -> dict:
        return {name: g for name, _, g in named_parameters(self.model)}

    def zero_grad(self):
        for layer in self.model if isinstance(self.model, (list, tuple)) else [self.model]:
            layer.zero_grad()

    def _items(self):
        items = named_parameters(self.model)
        if self.steps == 0 and items and not any(np.any(g) for _, _, g in items):
            # the PyTorch habit loss.backward(); opt.step() would otherwise train nothing, silently
            warnings.warn(
                f"{type(self).__name__}.step: every gradient is zero at the first step. loss.backward() only returns"
                " dL/dpred: pass it on with model.backward(loss.backward()) before step(), or use model.train_step()",
                RuntimeWarning,
                stacklevel=3,
            )
        self.steps += 1
        return items

    def _flat(self, name: str, arrays: tuple):
        """Flat views of one parameter's arrays (p, grad, buffers) for the update kernels, or None when a
        kernel cannot update them in place; remembered per name while the same arrays come back."""
        memo = self.__dict__.setdefault("_flats", {})
        got = memo.get(name)
        if got is not None and len(got[0]) == len(arrays) and all(a is b for a, b in zip(got[0], arrays)):
            return got[1]
        flat = tuple(a.reshape(-1) for a in arrays) if _compiled(*arrays) else None
        memo[name] = (arrays, flat)
        return flat

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"type", "config", "initial_lr", "steps", "state"}``: plain numbers and copies of the buffers.

        ``config`` holds the hyperparameters with the current ``lr``; ``state``
        maps each parameter name to its buffers (SGD: ``momentum_buffer``; Adam:
        ``m``, ``v``); ``steps`` counts the steps taken (Adam's ``t``).
        """
        return {
            "type": type(self).__name__,
            "config": self.get_config(),
            "initial_lr": self.initial_lr,
            "steps": self.steps,
            "state": {name: {k: v.copy() for k, v in buffers.items()} for name, buffers in self.state.items()},
        }

    def load_state_dict(self, state) -> None:
        """Restore a :meth:`state_dict` of an optimizer of the same type over the same parameters.

        ``state`` may also be another optimizer (its state is copied).  Every
        check (keys, hyperparameters, parameter names, buffer shapes and dtypes)
        runs before anything changes; the buffers are copied.
        """
        where = f"{type(self).__name__}.load_state_dict"
        if isinstance(state, Optimizer):
            state = state.state_dict()
        keys = {"type", "config", "initial_lr", "steps", "state"}
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise TypeError(f"{where}: state must be a dict with keys {sorted(keys)} (from state_dict()), got {got}"[:290])
        if state["type"] != type(self).__name__:
            raise ValueError(f"{where}: the state is of a {state['type']!r} optimizer, not {type(self).__name__}"[:290])
        names = set(self.get_config())
        if not isinstance(state["config"], dict) or set(state["config"]) != names:
            raise ValueError(f"{where}: state['config'] must have the keys {sorted(names)}, got {state['config']!r}"[:290])
        # a schedule may have brought lr down to 0 (cosine annealing to eta_min=0): allowed here, not in a constructor
        lr = real_number(state["config"]["lr"], "state['config']['lr']", where, low=0.0)
        config = {**self.check_config({**state["config"], "lr": 1.0}, where), "lr": lr}
        initial_lr = state["initial_lr"]
        if initial_lr is not None:
            initial_lr = real_number(initial_lr, "state['initial_lr']", where, low=0.0)
        steps = positive_int(state["steps"], "state['steps']", where, minimum=0)
        buffers = self._checked_buffers(state["state"], where)
        self.__dict__.update(config)
        self.initial_lr = initial_lr
        self.steps = steps
        self.state = buffers

    def _checked_buffers(self, state, where) -> dict:
        """Copies of the per-parameter buffers, after checking names, buffer names, shapes and dtypes."""
        if not isinstance(state, dict):
            raise TypeError(f"{where}: state['state'] must be a dict name -> buffers, got {type(state).__name__}")
        params = {name: p for name, p, _ in named_parameters(self.model, trainable_only=False)}
        out = {}
        for name, buffers in state.items():
            if name not in params:
                raise ValueError(f"{where}: state for {name!r}, which is not a parameter of this optimizer"[:290])
            if not isinstance(buffers, dict) or set(buffers) != set(self.buffer_names):
                raise ValueError(f"{where}: state[{name!r}] must hold the buffers {list(self.buffer_names)}"[:290])
            p = params[name]
            for key, value in buffers.items():
                if not isinstance(value, np.ndarray) or value.shape != p.shape or value.dtype != p.dtype:
                    got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
                    raise ValueError(f"{where}: state[{name!r}][{key!r}] must be a {p.dtype} array of shape {p.shape}, got {got}")
            out[name] = {key: value.copy() for key, value in buffers.items()}
        return out


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD`` (dampening 0)::

        g = grad + weight_decay * p
        buf = g                          (first step)
        buf = momentum * buf + g         (later steps)
        g = g + momentum * buf  if nesterov else  buf     (when momentum > 0)
        p = p - lr * g
    """

    hyperparameters = ("lr", "momentum", "nesterov", "weight_decay")
    buffer_names = ("momentum_buffer",)

    def __init__(self, model, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(model, lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    def check_config(self, config, where):
        momentum = real_number(config["momentum"], "momentum", where, low=0.0)
        nesterov = config["nesterov"]
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"{where}: nesterov must be True or False, got {type(nesterov).__name__}")
        if nesterov and momentum == 0:
            raise ValueError(f"{where}: nesterov=True requires momentum > 0")
        weight_decay = real_number(config["weight_decay"], "weight_decay", where, low=0.0)
        return {**super().check_config(config, where), "momentum": momentum, "nesterov": bool(nesterov), "weight_decay": weight_decay}

    def step(self):
        scalars = {}  # per dtype: lr, momentum, weight_decay as the parameters' dtype
        for name, p, grad in self._items():
            buf = None
            first = False
            if self.momentum:
                st = self.state.get(name)
                first = st is None
                if first:
                    st = self.state[name] = {"momentum_buffer": np.empty_like(p)}
                buf = st["momentum_buffer"]
            flat = self._flat(name, (p, grad) if buf is None else (p, grad, buf))
            if flat is None:
                self._step_numpy(p, grad, buf, first)
                continue
            s = scalars.get(p.dtype)
            if s is None:
                dt = p.dtype.type
                s = scalars[p.dtype] = (dt(self.lr), dt(self.momentum), dt(self.weight_decay), self.nesterov)
            _update(kopt.sgd_update, (flat[0], flat[1], flat[2] if buf is not None else _NO_BUFFER[p.dtype], *s, first))

    def _step_numpy(self, p, grad, buf, first):
        """The same rule in NumPy (kernels.optim.sgd_update's twin), for arrays the kernel cannot update in place."""
        dt = p.dtype.type
        g = grad + p * dt(self.weight_decay) if self.weight_decay else grad.copy()
        if buf is not None:
            if first:
                buf[...] = g
            else:
                buf *= dt(self.momentum)
                buf += g
            if self.nesterov:
                g += dt(self.momentum) * buf
            else:
                g = buf
        p -= dt(self.lr) * g


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (amsgrad off; L2 weight decay added to the gradient)::

        g = grad + weight_decay * p
        m = beta1 m + (1 - beta1) g;      v = beta2 v + (1 - beta2) g^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    ``t`` is ``steps``, the number of steps taken (saved in ``state_dict``).
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay")
    buffer_names = ("m", "v")
    #: False: weight decay is L2 added to the gradient (Adam); True: decoupled (AdamW)
    decoupled_weight_decay = False

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model, lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def check_config(self, config, where):
        betas = config["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}"[:290])
        betas = (
            real_number(betas[0], "betas[0]", where, low=0.0, high=1.0, high_open=True),
            real_number(betas[1], "betas[1]", where, low=0.0, high=1.0, high_open=True),
        )
        eps = real_number(config["eps"], "eps", where, low=0.0)
        weight_decay = real_number(config["weight_decay"], "weight_decay", where, low=0.0)
        return {**super().check_config(config, where), "betas": betas, "eps": eps, "weight_decay": weight_decay}

    @property
    def t(self) -> int:
        """Adam's step count t (the number of steps taken)."""
        return self.steps

    def step(self):
        items = self._items()  # counts this step: t = self.steps
        beta1, beta2 = self.betas
        bias1 = 1.0 - beta1**self.steps
        bias2_sqrt = math.sqrt(1.0 - beta2**self.steps)
        # AdamW: the decay acts on the weights, not through the moments (torch: param.mul_(1 - lr * wd))
        decoupled = self.decoupled_weight_decay and self.weight_decay
        decay = 1.0 - self.lr * self.weight_decay if decoupled else 1.0
        l2 = 0.0 if self.decoupled_weight_decay else self.weight_decay
        scalars = (decay, l2, 1.0 - beta1, beta2, 1.0 - beta2, bias2_sqrt, self.eps, self.lr / bias1)
        rules = {}  # per dtype: the scalars as the parameters' dtype
        for name, p, grad in items:
            st = self.state.get(name)
            if st is None:
                st = self.state[name] = {"m": np.zeros_like(p), "v": np.zeros_like(p)}
            m, v = st["m"], st["v"]
            flat = self._flat(name, (p, grad, m, v))
            if flat is None:
                self._step_numpy(p, grad, m, v, *scalars)
                continue
            rule = rules.get(p.dtype)
            if rule is None:
                rule = rules[p.dtype] = kopt.AdamRule(*map(p.dtype.type, scalars))
            _update(kopt.adam_update, (*flat, rule))

    @staticmethod
    def _step_numpy(p, grad, m, v, decay, l2, one_minus_beta1, beta2, one_minus_beta2, bias2_sqrt, eps, step):
        """The same rule in NumPy (kernels.optim.adam_update's twin), for arrays the kernel cannot update in place."""
        dt = p.dtype.type
        if decay != 1.0:
            p *= dt(decay)
        g = grad + p * dt(l2) if l2 else grad
        # m.lerp_(g, 1 - beta1) in torch: m + (1 - beta1) (g - m)
        m += dt(one_minus_beta1) * (g - m)
        v *= dt(beta2)
        v += dt(one_minus_beta2) * g * g
        denom = np.sqrt(v) / dt(bias2_sqrt) + dt(eps)
        p -= dt(step) * (m / denom)


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW`` (amsgrad off): Adam with decoupled weight decay::

        p = p * (1 - lr * weight_decay)                 (first, on the weights themselves)
        m = beta1 m + (1 - beta1) grad;   v = beta2 v + (1 - beta2) grad^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    torch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
    The decay never enters the moments, so it shrinks every weight by the same
    factor whatever the gradient's scale (Loshchilov & Hutter, "Decoupled Weight
    Decay Regularization").
    """

    decoupled_weight_decay = True

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(model, lr, betas=betas, eps=eps, weight_decay=weight_decay)


def clip_grad_norm(model, max_norm) -> float:
    """Scale all gradients so their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: total = sqrt(sum ||g||^2); every
    gradient is multiplied by min(1, max_norm / (total + 1e-6)).  ``model``: a
    Layer or Sequential (all its gradients), or an optimizer (the gradients of
    the parameters it trains).  Returns the norm before clipping (inf/nan are
    returned, gradients then left as they are).
    """
    where = "clip_grad_norm"
    if not (hasattr(model, "params") and hasattr(model, "grads")):
        raise TypeError(f"{where}: model must be a Layer, a Sequential or an optimizer, got {type(model).__name__}")
    grads = model.grads
    if not grads:
        raise ValueError(f"{where}: model has no gradients to clip")
    max_norm = real_number(max_norm, "max_norm", where, low=0.0, low_open=True)
    total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    if not math.isfinite(total):
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return total
