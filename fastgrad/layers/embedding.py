"""Embedding layer: a learned vector per integer index, y[..., d] = W[x[...], d]."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import as_indices, positive_int
from ..functional.embedding import padding_index
from ..random import init_generator
from .base import Layer, check_param_sizes


class Embedding(Layer):
    """Lookup table ``W (num_embeddings, embedding_dim)``: integer indices of any shape -> (*x.shape, embedding_dim).

    As ``torch.nn.Embedding``: W is initialised from N(0, 1) (``seed`` makes it
    reproducible); ``padding_idx`` (negative counts from the end, stored
    normalised) names a row that starts at zero and never receives a gradient.
    The input is integer indices in [0, num_embeddings): floats and bools raise
    TypeError (never truncated), out-of-range values ValueError.  ``backward``
    accumulates dW into ``grads["W"]`` and returns None (indices have no gradient).
    """

    takes_indices = True

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32, seed=None):
        super().__init__(dtype)
        where = "Embedding"
        self.num_embeddings = positive_int(num_embeddings, "num_embeddings", where)
        self.embedding_dim = positive_int(embedding_dim, "embedding_dim", where)
        self.padding_idx = padding_index(padding_idx, self.num_embeddings, where)
        shape = (self.num_embeddings, self.embedding_dim)
        check_param_sizes(where, self.dtype, {"W": shape})
        W = init_generator(seed, where).standard_normal(shape, dtype=self.dtype.type)  # seed=None: fg.manual_seed's stream
        if self.padding_idx is not None:
            W[self.padding_idx] = 0
        self.add_param("W", W)

    def forward(self, x):
        idx = as_indices(x, "x", self._where("forward"), high=self.num_embeddings)
        if idx.size == 0:
            raise ValueError(f"{self._where('forward')}: x is empty (shape {idx.shape})")
        y, self._cache = F.embedding_forward(idx, self.params["W"], self.padding_idx, check_finite=False)
        return y

    def backward(self, dy):
        cache = self._saved()
        dy = self._grad_input(dy, cache.out_shape, self.dtype)
        F.embedding_backward_into((self.grads["W"],), dy, cache, check_finite=False)
        return None

    def get_config(self):
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            "dtype": np.dtype(self.dtype).name,
        }

    def output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)
