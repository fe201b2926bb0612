"""Dropout layer: random units zeroed in training, the identity in evaluation."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import positive_int
from ..functional.dropout import dropout_probability
from .base import Layer


class Dropout(Layer):
    """Inverted dropout, as ``torch.nn.Dropout``: in training (``layer.training``,
    see ``train()`` / ``eval()``) each element is zeroed with probability ``p``
    and the others are scaled by 1/(1 - p); in evaluation the layer is the identity.

    The mask is drawn afresh on every forward and reused by ``backward``.  With
    ``seed=None`` it comes from fastgrad's default generator
    (``fastgrad.functional.default_generator``); an int ``seed`` gives the layer
    its own generator, so a run is reproducible on its own.  (A gradient check
    needs the mask fixed: check in ``eval()`` mode or with p = 0.)
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        where = "Dropout"
        self.p = dropout_probability(p, where)
        self.seed = None if seed is None else positive_int(seed, "seed", where, minimum=0)
        self._rng = None if seed is None else np.random.default_rng(self.seed)

    def forward(self, x):
        x = self._input(x)
        y, self._cache = F.dropout_forward(x, self.p, self.training, rng=self._rng, check_finite=False)
        return y

    def backward(self, dy):
        cache = self._saved()
        dy = self._grad_input(dy, cache.shape, cache.dtype)
        dx = np.zeros(cache.shape, cache.dtype)
        F.dropout_backward_into((dx,), dy, cache, check_finite=False)
        return dx

    def get_config(self):
        return {"p": self.p, "seed": self.seed}
