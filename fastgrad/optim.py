"""Optimizers with torch.optim's exact update rules, and gradient clipping.

An optimizer holds the model (any object with ``params`` and ``grads`` dicts:
a layer or a Sequential) and updates every parameter in place, so the arrays
the layers own are the ones that change.
"""

from __future__ import annotations

import math

import numpy as np

from ._checks import real_number


def _params_and_grads(model, where):
    if not (hasattr(model, "params") and hasattr(model, "grads")):
        raise TypeError(f"{where}: model must be a Layer or Sequential (with params and grads), got {type(model).__name__}")
    params, grads = model.params, model.grads
    if not params:
        raise ValueError(f"{where}: model has no parameters to optimise")
    return params, grads


class Optimizer:
    def __init__(self, model, lr):
        self.model = model
        where = type(self).__name__
        _params_and_grads(model, where)
        self.lr = real_number(lr, "lr", where, low=0.0, low_open=True)
        self.state: dict[str, dict] = {}

    def zero_grad(self):
        self.model.zero_grad()

    def _items(self):
        params, grads = _params_and_grads(self.model, f"{type(self).__name__}.step")
        return [(name, p, grads[name]) for name, p in params.items()]


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD`` (dampening 0)::

        g = grad + weight_decay * p
        buf = g                          (first step)
        buf = momentum * buf + g         (later steps)
        g = g + momentum * buf  if nesterov else  buf     (when momentum > 0)
        p = p - lr * g
    """

    def __init__(self, model, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(model, lr)
        where = "SGD"
        self.momentum = real_number(momentum, "momentum", where, low=0.0)
        self.weight_decay = real_number(weight_decay, "weight_decay", where, low=0.0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"{where}: nesterov must be True or False, got {type(nesterov).__name__}")
        if nesterov and self.momentum == 0:
            raise ValueError(f"{where}: nesterov=True requires momentum > 0")
        self.nesterov = bool(nesterov)

    def step(self):
        for name, p, grad in self._items():
            g = grad + p * p.dtype.type(self.weight_decay) if self.weight_decay else grad.copy()
            if self.momentum:
                buf = self.state.get(name)
                if buf is None:
                    buf = self.state[name] = g.copy()
                else:
                    buf *= p.dtype.type(self.momentum)
                    buf += g
                if self.nesterov:
                    g += p.dtype.type(self.momentum) * buf
                else:
                    g = buf
            p -= p.dtype.type(self.lr) * g


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (amsgrad off; L2 weight decay added to the gradient)::

        g = grad + weight_decay * p
        m = beta1 m + (1 - beta1) g;      v = beta2 v + (1 - beta2) g^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model, lr)
        where = "Adam"
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}"[:290])
        self.betas = (
            real_number(betas[0], "betas[0]", where, low=0.0, high=1.0, high_open=True),
            real_number(betas[1], "betas[1]", where, low=0.0, high=1.0, high_open=True),
        )
        self.eps = real_number(eps, "eps", where, low=0.0)
        self.weight_decay = real_number(weight_decay, "weight_decay", where, low=0.0)
        self.t = 0

    def step(self):
        self.t += 1
        beta1, beta2 = self.betas
        bias1 = 1.0 - beta1**self.t
        bias2_sqrt = math.sqrt(1.0 - beta2**self.t)
        for name, p, grad in self._items():
            dt = p.dtype.type
            g = grad + p * dt(self.weight_decay) if self.weight_decay else grad
            st = self.state.get(name)
            if st is None:
                st = self.state[name] = {"m": np.zeros_like(p), "v": np.zeros_like(p)}
            m, v = st["m"], st["v"]
            # m.lerp_(g, 1 - beta1) in torch: m + (1 - beta1) (g - m)
            m += dt(1.0 - beta1) * (g - m)
            v *= dt(beta2)
            v += dt(1.0 - beta2) * g * g
            denom = np.sqrt(v) / dt(bias2_sqrt) + dt(self.eps)
            p -= dt(self.lr / bias1) * (m / denom)


def clip_grad_norm(model, max_norm) -> float:
    """Scale all gradients so their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: total = sqrt(sum ||g||^2); every
    gradient is multiplied by min(1, max_norm / (total + 1e-6)).  Returns the
    norm before clipping (inf/nan are returned, gradients then left as they are).
    """
    where = "clip_grad_norm"
    _, grads = _params_and_grads(model, where)
    max_norm = real_number(max_norm, "max_norm", where, low=0.0, low_open=True)
    total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    if not math.isfinite(total):
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return total
