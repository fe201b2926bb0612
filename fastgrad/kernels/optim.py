"""Optimizer updates: one element-wise pass over a parameter tensor, its gradient and its buffers.

The rules are ``torch.optim``'s, written per element in the order the NumPy
form of ``fastgrad.optim`` computed them (each operation rounded on its own:
``fastmath=False``, so no multiply-add is fused and the result is bitwise that
of the NumPy form).  One pass instead of NumPy's six to ten temporaries: the
digits-MLP SGD step (6 tensors) took 15 us in NumPy.

SGD (dampening 0)::

    g = grad + weight_decay * p                       (weight_decay > 0)
    buf = g  (first step);   buf = momentum * buf + g  (later steps)       (momentum > 0)
    g = g + momentum * buf  (nesterov)  or  g = buf
    p = p - lr * g

Adam / AdamW (amsgrad off)::

    p = p * decay                                     (AdamW: decay = 1 - lr * weight_decay)
    g = grad + l2 * p                                 (Adam's L2 weight decay, l2 > 0)
    m = m + (1 - beta1) (g - m);   v = beta2 v + (1 - beta2) g^2
    p = p - step * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)      step = lr / (1 - beta1^t)
"""

import math
from typing import NamedTuple

from numba import prange

from .._jit import F1, Real, kernel


@kernel(fastmath=False)
def sgd_update(p: F1, grad: F1, buf: F1, lr: Real, momentum: Real, weight_decay: Real, nesterov: bool, first: bool):
    """One SGD step over p (size,), in place; buf (size,) the momentum buffer, (0,) without momentum."""
    for i in prange(p.shape[0]):
        g = grad[i] + p[i] * weight_decay if weight_decay != 0 else grad[i]
        if buf.shape[0] > 0:
            b = g if first else buf[i] * momentum + g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        p[i] = p[i] - lr * g


class AdamRule(NamedTuple):
    """The scalars of one Adam step, in the parameters' dtype (see the module docstring)."""

    decay: Real
    l2: Real
    one_minus_beta1: Real
    beta2: Real
    one_minus_beta2: Real
    bias2_sqrt: Real
    eps: Real
    step: Real


@kernel(fastmath=False)
def adam_update(p: F1, grad: F1, m: F1, v: F1, rule: AdamRule):
    """One Adam step over p (size,), in place, with its moments m and v (size,) (see the module docstring)."""
    decay, l2, one_minus_beta1, beta2, one_minus_beta2, bias2_sqrt, eps, step = rule
    for i in prange(p.shape[0]):
        q = p[i] * decay  # decay = 1 (Adam) leaves p exactly as it is
        g = grad[i] + q * l2 if l2 != 0 else grad[i]
        mi = m[i] + one_minus_beta1 * (g - m[i])
        vi = v[i] * beta2 + one_minus_beta2 * g * g
        denom = math.sqrt(vi) / bias2_sqrt + eps
        m[i] = mi
        v[i] = vi
        p[i] = q - step * (mi / denom)
