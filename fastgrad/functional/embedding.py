"""Embedding lookup, functional: ``y[..., d] = W[indices[...], d]`` and its scatter-add gradient (kernels.embedding).

``indices``: integers of any shape in [0, V); ``W`` (V, D) -> ``y`` (*indices.shape, D).
``padding_idx`` (an int in [-V, V), negative counting from the end, as PyTorch)
names a row that receives no gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _jit
from .._checks import as_array, as_indices, check_alloc
from ..kernels import embedding as kemb
from .common import check_cache, grad_buffer, unpack_grads, upstream
from .geometry import is_int


class EmbeddingCache(NamedTuple):
    """What the backward needs: the flattened int64 indices, their shape, W's shape and dtype, the padding row."""

    idx: np.ndarray  # (S,) int64
    shape: tuple  # the indices' own shape
    W_shape: tuple  # (V, D)
    dtype: np.dtype
    padding_idx: int  # in [0, V), or -1 for none

    @property
    def out_shape(self) -> tuple:
        """The shape of y and dy: (*indices.shape, D)."""
        return tuple(self.shape) + (self.W_shape[1],)


def padding_index(padding_idx, num_embeddings: int, where: str):
    """``padding_idx`` as a row in [0, num_embeddings), or None; negative values count from the end (PyTorch)."""
    if padding_idx is None:
        return None
    if not is_int(padding_idx):
        raise TypeError(f"{where}: padding_idx must be an int or None, got {type(padding_idx).__name__}")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"{where}: padding_idx must be in [-{num_embeddings}, {num_embeddings}), got {padding_idx}")
    return int(padding_idx) % num_embeddings


def embedding_forward(indices, W, padding_idx=None, *, check_finite=None):
    """y[..., d] = W[indices[...], d]: indices (any shape) of ints in [0, V), W (V, D) -> y (*indices.shape, D).

    Returns ``(y, cache)``.  Float or bool indices raise TypeError (never
    truncated), out-of-range ones ValueError.
    """
    where = "embedding_forward"
    W = as_array(W, "W", where, ndim=2, check_finite=check_finite)
    V, D = W.shape
    pad = padding_index(padding_idx, V, where)
    idx = as_indices(indices, "indices", where, high=V)
    if idx.size == 0:
        raise ValueError(f"{where}: indices is empty (shape {idx.shape})")
    check_alloc(where, W.dtype, [("y", idx.shape + (D,))])
    flat = idx.reshape(-1)
    y = np.empty((flat.size, D), W.dtype)
    _jit.pick(kemb.embedding_forward, y.size)(y, flat, W)
    return y.reshape(idx.shape + (D,)), EmbeddingCache(flat, idx.shape, W.shape, W.dtype, -1 if pad is None else pad)


def embedding_backward(dy, cache: EmbeddingCache, *, check_finite=None):
    """dW (V, D): row v gets the sum of dy over the positions that read it (none for the padding row)."""
    check_cache(cache, EmbeddingCache, "embedding_forward", "embedding_backward")
    dW = np.zeros(cache.W_shape, cache.dtype)
    _backward(dW, dy, cache, check_finite, "embedding_backward")
    return dW


def embedding_backward_into(grads, dy, cache: EmbeddingCache, *, check_finite=None) -> None:
    """Accumulate (``+=``) dW into ``grads`` = (dW,), a writable C-contiguous (V, D) array of W's dtype."""
    where = "embedding_backward_into"
    check_cache(cache, EmbeddingCache, "embedding_forward", where)
    (dW,) = unpack_grads(grads, ("dW",), where)
    _backward(grad_buffer(dW, "dW", cache.W_shape, cache.dtype, where), dy, cache, check_finite, where)


def _backward(dW, dy, cache: EmbeddingCache, check_finite, where):
    dy = upstream(dy, cache.out_shape, cache.dtype, where, check_finite)
    V, D = cache.W_shape
    # counting sort of the positions by row: a stable sort keeps each row's positions in
    # increasing order, so repeated indices add up in the same order at any thread count
    order = np.argsort(cache.idx, kind="stable").astype(np.int64, copy=False)
    start = np.zeros(V + 1, np.int64)
    np.cumsum(np.bincount(cache.idx, minlength=V), out=start[1:])
    _jit.pick(kemb.embedding_backward, dy.size)(dW, dy.reshape(-1, D), order, start, cache.padding_idx)
