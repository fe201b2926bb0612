"""Dense layer: the cheat sheet's first section, over a batch of N samples.

Forward (one sample s of the batch)::

    z_k = b_k + sum_j w_kj * x_j          z (N, m), x (N, n), W (m, n), b (m,)
    y_k = sigma(z_k)                      y (N, m)

Backward (the cheat sheet's four lines)::

    dL/dz_k  = dL/dy_k * sigma'(z_k)
    dL/db_k  = dL/dz_k                    summed over the batch
    dL/dw_kj = dL/dz_k * x_j              summed over the batch
    dL/dx_j  = sum_k dL/dz_k * w_kj

Race freedom: ``dx`` rows belong to samples (parallel over s), ``dW``/``db``
rows belong to output units (parallel over k).  Each element is written by one
iteration in a fixed order, so results are bitwise identical at any thread count.
"""

from numba import prange

from .._jit import kernel
from .activations import act, dact


@kernel
def dense_forward(y, z, x, W, b, code):
    """z[s, k] = b[k] + sum_j W[k, j] * x[s, j];  y[s, k] = sigma(z[s, k]).

    Shapes: y, z (N, m) outputs (overwritten); x (N, n); W (m, n); b (m,) or
    (0,) for no bias; code selects sigma (kernels.activations).
    """
    N, n = x.shape
    m = W.shape[0]
    has_bias = b.shape[0] == m
    zero = z.dtype.type(0)
    for s in prange(N):
        for k in range(m):
            acc = b[k] if has_bias else zero
            # innermost j walks the contiguous rows W[k, :] and x[s, :]
            for j in range(n):
                acc += W[k, j] * x[s, j]
            z[s, k] = acc
            y[s, k] = act(acc, code)


@kernel
def dense_backward(dx, dW, db, dy, x, z, W, code):
    """Accumulate dx, dW, db (``+=``) from the upstream gradient dy.

    dL/dz[s, k] = dy[s, k] * sigma'(z[s, k])   (recomputed in both loops: O(N m)
                                                next to the O(N m n) products)
    dx[s, j]   += sum_k dL/dz[s, k] * W[k, j]   parallel over samples s
    dW[k, j]   += sum_s dL/dz[s, k] * x[s, j]   parallel over output units k
    db[k]      += sum_s dL/dz[s, k]             (skipped when db has shape (0,))

    Shapes: dx, x (N, n); dW, W (m, n); db (m,) or (0,); dy, z (N, m).
    """
    N, n = x.shape
    m = W.shape[0]
    has_bias = db.shape[0] == m
    for s in prange(N):
        for k in range(m):
            dz = W.dtype.type(dy[s, k] * dact(z[s, k], code))
            for j in range(n):
                dx[s, j] += dz * W[k, j]
    for k in prange(m):
        for s in range(N):
            dz = W.dtype.type(dy[s, k] * dact(z[s, k], code))
            if has_bias:
                db[k] += dz
            for j in range(n):
                dW[k, j] += dz * x[s, j]
