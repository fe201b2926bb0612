"""Inverted dropout: multiply by a saved mask of kept-and-rescaled units.

Training forward with keep mask r_k ~ Bernoulli(1 - p), drawn by the functional
layer (kernels draw no random numbers, so the mask comes from one generator in
one fixed order whatever the thread count)::

    m_k = r_k / (1 - p)                    (0 where dropped; all 0 when p = 1)
    y_k = x_k * m_k                        E[y_k] = x_k, so evaluation is the identity

Backward, reusing the very mask of the forward::

    dL/dx_k = dL/dy_k * m_k

Element-wise over flat arrays of shape (size,): each element is its own owner.
"""

from numba import prange

from .._jit import F1, kernel


@kernel
def dropout_forward(y: F1, x: F1, mask: F1):
    """y[k] = x[k] * mask[k].  Shapes: y (overwritten), x, mask (size,)."""
    for k in prange(x.shape[0]):
        y[k] = x[k] * mask[k]


@kernel
def dropout_backward(dx: F1, dy: F1, mask: F1):
    """dx[k] += dy[k] * mask[k].  Shapes: dx (accumulated), dy, mask (size,)."""
    for k in prange(dy.shape[0]):
        dx[k] += dy[k] * mask[k]
