"""Embedding lookup: a row of the table per integer index, and its scatter-add gradient.

Forward (one index position s of the flattened index array)::

    y[s, d] = W[idx[s], d]                 y (S, D), idx (S,) in [0, V), W (V, D)

Backward: every position that read row v adds its upstream gradient to that row::

    dL/dW[v, d] = sum_{s : idx[s] = v} dL/dy[s, d]       (v != padding_idx)

Race freedom: the forward is parallel over positions s (each owns its row of y).
The backward is parallel over embedding rows v, the index that owns the written
element of dW: the functional layer sorts the positions by index once (a stable
sort, so positions of one row stay in increasing order), and row v adds the
gradients of ``order[start[v]:start[v + 1]]``, always in that order.  Repeated
indices therefore add up in a fixed order, bitwise the same at any thread count.
"""

from numba import prange

from .._jit import F2, I1, kernel


@kernel
def embedding_forward(y: F2, idx: I1, W: F2):
    """y[s, d] = W[idx[s], d].  Shapes: y (S, D) overwritten; idx (S,) int64 in [0, V); W (V, D)."""
    S, D = y.shape
    for s in prange(S):
        v = idx[s]
        for d in range(D):
            y[s, d] = W[v, d]


@kernel
def embedding_backward(dW: F2, dy: F2, order: I1, start: I1, padding_idx: int):
    """dW[v, d] += sum_{p = start[v]}^{start[v + 1] - 1} dy[order[p], d] for every row v except padding_idx.

    ``order`` (S,) lists the positions s sorted by idx[s] (stable), ``start`` (V + 1,)
    the first entry of each row's run in ``order`` (a counting sort's offsets).
    ``padding_idx`` < 0 means no padding row.  Shapes: dW (V, D) accumulated; dy (S, D).
    """
    V, D = dW.shape
    for v in prange(V):
        if v == padding_idx:
            continue  # the padding row receives no gradient
        for p in range(start[v], start[v + 1]):
            s = order[p]
            for d in range(D):
                dW[v, d] += dy[s, d]
