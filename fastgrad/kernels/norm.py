"""Normalisation layers: layer norm (per row) and batch norm (per channel).

Both normalise a group of values to zero mean and unit variance, then scale and
shift them with learned gamma and beta (the biased variance, as PyTorch)::

    mu = (1/M) sum_j x_j,   var = (1/M) sum_j (x_j - mu)^2,   r = 1 / sqrt(var + eps)
    xhat_j = (x_j - mu) r
    y_j = gamma xhat_j + beta

Backward (g_j = dL/dy_j gamma; the mean and variance depend on every x_j of the group)::

    dL/dgamma = sum_j dL/dy_j xhat_j,   dL/dbeta = sum_j dL/dy_j     (summed over groups for layer norm)
    dL/dx_j = r (g_j - (1/M) sum_k g_k - xhat_j (1/M) sum_k g_k xhat_k)

With statistics that do not depend on x (batch norm in evaluation: the running
mean and variance) the last line is just dL/dx_j = r g_j.

* Layer norm: a group is a row r of x (R, D) (the normalised trailing axes
  flattened); gamma, beta (D,) act per feature d.
* Batch norm: a group is a channel c of x (N, C, S) (S = spatial positions, 1
  for (N, C) input), M = N S; gamma, beta (C,) act per channel.

Forward saves xhat (and r per group); the backward never recomputes them.
gamma and beta of shape (0,) mean "no affine transform" (gamma = 1, beta = 0,
no parameter gradients).

Race freedom: layer norm's forward and dx are parallel over rows (each owns
its row); its dgamma/dbeta are parallel over fixed chunks of FEATURE_CHUNK
features, each summing over the rows in order.  Batch norm is parallel over
channels for everything.  Bitwise identical at any thread count.

Compiled without fast-math: with reassociation allowed, LLVM vectorised the
statistics' sums differently in the parallel and the serial twin (float32
layer norm outputs differed in the last bit between 1 and 2 threads).  In
program order both twins add in the same sequence.
"""

import math
from typing import NamedTuple

from numba import prange

from .._jit import F1, F2, F3, Real, helper, kernel

#: features per parallel iteration of layer norm's dgamma/dbeta loop: a fixed
#: constant (not the thread count), wide enough that the inner loop over
#: contiguous features vectorises
FEATURE_CHUNK = 64


class NormStats(NamedTuple):
    """Per-group statistics, (G,) each: mean, biased variance, r = 1 / sqrt(var + eps)."""

    mean: F1
    var: F1
    rstd: F1


class NormGrads(NamedTuple):
    """The gradients a norm backward accumulates into: dx (input's shape), dgamma, dbeta ((0,) without affine)."""

    dx: F2
    dgamma: F1
    dbeta: F1


class BatchNormGrads(NamedTuple):
    """As NormGrads for batch norm's (N, C, S) layout."""

    dx: F3
    dgamma: F1
    dbeta: F1


@helper(fastmath=False)
def mean_var(g):
    """(mu, var) of the values of a 2-D block g: mu = (1/M) sum g, var = (1/M) sum (g - mu)^2, M = g.size.

    Two passes in row-major order: no cancellation as in E[g^2] - mu^2.  g is a
    view: a row x[r:r + 1] (layer norm) or a channel x[:, c, :] (batch norm).
    """
    inv_m = g.dtype.type(1.0 / g.size)
    acc = g.dtype.type(0)
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            acc += g[i, j]
    mu = acc * inv_m
    acc = g.dtype.type(0)
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            t = g[i, j] - mu
            acc += t * t
    return mu, acc * inv_m


@kernel(fastmath=False)
def layer_norm_forward(y: F2, xhat: F2, stats: NormStats, x: F2, gamma: F1, beta: F1, eps: Real):
    """Per row r of x (R, D): mu_r, var_r, r_r = 1/sqrt(var_r + eps); xhat[r, d] = (x[r, d] - mu_r) r_r;
    y[r, d] = gamma[d] xhat[r, d] + beta[d].

    Shapes: y, xhat (R, D) and stats (R,) each, overwritten; x (R, D); gamma, beta (D,) or (0,).
    """
    R, D = x.shape
    mean = stats.mean
    var = stats.var
    rstd = stats.rstd
    affine = gamma.shape[0] > 0
    one = x.dtype.type(1)
    for r in prange(R):
        mu, v = mean_var(x[r:r + 1])
        rs = one / math.sqrt(v + eps)
        mean[r] = mu
        var[r] = v
        rstd[r] = rs
        for d in range(D):
            h = (x[r, d] - mu) * rs
            xhat[r, d] = h
            y[r, d] = gamma[d] * h + beta[d] if affine else h


@kernel(fastmath=False)
def layer_norm_backward(grads: NormGrads, dy: F2, xhat: F2, rstd: F1, gamma: F1):
    """dx[r, d] += r_r (g[r, d] - mean_d g[r, :] - xhat[r, d] mean_d (g xhat)[r, :]), g = dy gamma;
    dgamma[d] += sum_r dy[r, d] xhat[r, d];  dbeta[d] += sum_r dy[r, d].

    Shapes: grads.dx, dy, xhat (R, D); rstd (R,); gamma and grads.dgamma/dbeta (D,) or (0,).
    """
    R, D = dy.shape
    dx = grads.dx
    dgamma = grads.dgamma
    dbeta = grads.dbeta
    affine = gamma.shape[0] > 0
    inv_d = dy.dtype.type(1.0 / D)
    for r in prange(R):
        sg = dy.dtype.type(0)
        sgx = dy.dtype.type(0)
        for d in range(D):
            g = dy[r, d] * gamma[d] if affine else dy[r, d]
            sg += g
            sgx += g * xhat[r, d]
        a = sg * inv_d
        b = sgx * inv_d
        rs = rstd[r]
        for d in range(D):
            g = dy[r, d] * gamma[d] if affine else dy[r, d]
            dx[r, d] += rs * (g - a - xhat[r, d] * b)
    if affine:
        chunks = (D + FEATURE_CHUNK - 1) // FEATURE_CHUNK
        for c in prange(chunks):
            lo = c * FEATURE_CHUNK
            hi = min(lo + FEATURE_CHUNK, D)
            for r in range(R):
                for d in range(lo, hi):
                    dgamma[d] += dy[r, d] * xhat[r, d]
                    dbeta[d] += dy[r, d]


@kernel(fastmath=False)
def batch_norm_forward(y: F3, xhat: F3, stats: NormStats, x: F3, gamma: F1, beta: F1, eps: Real, training: bool):
    """Per channel c of x (N, C, S): training: mu_c, var_c over the N S values of the batch (written
    to stats); evaluation: mu_c, var_c read from stats (the running statistics).  Then
    r_c = 1/sqrt(var_c + eps), xhat[n, c, s] = (x[n, c, s] - mu_c) r_c, y = gamma[c] xhat + beta[c].

    Shapes: y, xhat (N, C, S) overwritten; stats (C,) each (rstd always overwritten); x (N, C, S);
    gamma, beta (C,) or (0,).
    """
    N, C, S = x.shape
    mean = stats.mean
    var = stats.var
    rstd = stats.rstd
    affine = gamma.shape[0] > 0
    one = x.dtype.type(1)
    for c in prange(C):
        if training:
            mu, v = mean_var(x[:, c, :])
            mean[c] = mu
            var[c] = v
        else:
            mu = mean[c]
            v = var[c]
        rs = one / math.sqrt(v + eps)
        rstd[c] = rs
        g = gamma[c] if affine else one
        b = beta[c] if affine else one - one
        for n in range(N):
            for s in range(S):
                h = (x[n, c, s] - mu) * rs
                xhat[n, c, s] = h
                y[n, c, s] = g * h + b


@kernel(fastmath=False)
def batch_norm_backward(grads: BatchNormGrads, dy: F3, xhat: F3, rstd: F1, gamma: F1, training: bool):
    """Per channel c (M = N S values): dgamma[c] += sum dy xhat; dbeta[c] += sum dy;
    training: dx += gamma_c r_c (dy - (1/M) sum dy - xhat (1/M) sum dy xhat);
    evaluation (fixed statistics): dx += gamma_c r_c dy.

    Shapes: grads.dx, dy, xhat (N, C, S); rstd (C,); gamma and grads.dgamma/dbeta (C,) or (0,).
    """
    N, C, S = dy.shape
    dx = grads.dx
    dgamma = grads.dgamma
    dbeta = grads.dbeta
    affine = gamma.shape[0] > 0
    inv_m = dy.dtype.type(1.0 / (N * S))
    for c in prange(C):
        sdy = dy.dtype.type(0)
        sdyx = dy.dtype.type(0)
        for n in range(N):
            for s in range(S):
                sdy += dy[n, c, s]
                sdyx += dy[n, c, s] * xhat[n, c, s]
        if affine:
            dgamma[c] += sdyx
            dbeta[c] += sdy
        k = gamma[c] * rstd[c] if affine else rstd[c]
        if training:
            a = sdy * inv_m
            b = sdyx * inv_m
            for n in range(N):
                for s in range(S):
                    dx[n, c, s] += k * (dy[n, c, s] - a - xhat[n, c, s] * b)
        else:
            for n in range(N):
                for s in range(S):
                    dx[n, c, s] += k * dy[n, c, s]
