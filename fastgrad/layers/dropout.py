"""Dropout layer: random units zeroed in training, the identity in evaluation."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..random import check_seed
from ..functional.dropout import dropout_probability
from .base import Layer


class Dropout(Layer):
    """Inverted dropout, as ``torch.nn.Dropout``: in training (``layer.training``,
    see ``train()`` / ``eval()``) each element is zeroed with probability ``p``
    and the others are scaled by 1/(1 - p); in evaluation the layer is the identity.

    The mask is drawn afresh on every forward and reused by ``backward``.  With
    ``seed=None`` it comes from fastgrad's default generator, so
    ``fg.manual_seed(s)`` makes a run reproducible; an int ``seed`` gives the
    layer its own generator instead (its stream is not part of a checkpoint's
    random state: for exactly resumable training leave ``seed=None``).  (A gradient check
    needs the mask fixed: check in ``eval()`` mode or with p = 0.)
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        where = "Dropout"
        self.p = dropout_probability(p, where)
        self.seed = None if seed is None else check_seed(seed, where)
        self._rng = None if seed is None else np.random.default_rng(self.seed)  # None: the default generator

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
