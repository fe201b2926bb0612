"""Finite-difference tools shared by the gradient tests (float64 only).

``numeric_grad(loss, x)`` perturbs every element of ``x`` in place by +-eps and
returns the central difference of the scalar ``loss()``; ``x`` is restored
afterwards.  ``assert_close`` applies the suite's tolerance rule
|a - n| <= atol + rtol |n| and names the worst element on failure.
``random_direction_check`` is the cheap test for realistic shapes:
<v, analytic grad> == (loss(x + e v) - loss(x - e v)) / 2e.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6
ATOL = 1e-5
RTOL = 1e-3


def numeric_grad(loss, x: np.ndarray, eps: float = EPS) -> np.ndarray:
    assert x.dtype == np.float64, "finite differences run in float64 only"
    g = np.zeros_like(x)
    flat = x.reshape(-1)  # a view: x must be contiguous
    assert np.shares_memory(flat, x)
    gflat = g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = loss()
        flat[i] = old - eps
        down = loss()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def assert_close(analytic, numeric, name: str = "", atol: float = ATOL, rtol: float = RTOL) -> float:
    """Assert the tolerance rule elementwise; return the max abs error."""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    assert analytic.shape == numeric.shape, f"{name}: shape {analytic.shape} != {numeric.shape}"
    err = np.abs(analytic - numeric)
    bad = err > atol + rtol * np.abs(numeric)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err, -1)), err.shape)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {err.size} elements off; worst at {i}: "
            f"analytic {analytic[i]!r} vs numeric {numeric[i]!r}"
        )
    return float(err.max()) if err.size else 0.0


def random_direction_check(loss, x: np.ndarray, grad: np.ndarray, rng, eps: float = EPS, atol: float = 1e-6, rtol: float = 1e-5):
    """<v, grad> against the central difference of loss along a random unit v; returns the error."""
    v = rng.standard_normal(x.shape)
    v /= np.linalg.norm(v)
    x0 = x.copy()
    x[...] = x0 + eps * v
    up = loss()
    x[...] = x0 - eps * v
    down = loss()
    x[...] = x0
    numeric = (up - down) / (2 * eps)
    analytic = float(np.sum(v * grad))
    assert abs(analytic - numeric) <= atol + rtol * abs(numeric), f"directional derivative {analytic!r} vs numeric {numeric!r}"
    return abs(analytic - numeric)


def away_from_kinks(x, kinks=(0.0,), margin=0.05):
    """Push values within `margin` of a kink (ReLU 0, hard_tanh +-1, ...) away from it."""
    x = np.array(x, copy=True)
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = k + np.where(x[near] >= k, margin, -margin) * 2
    return x


KINKS = {
    "relu": (0.0,),
    "leaky_relu": (0.0,),
    "elu": (0.0,),
    "hard_sigmoid": (-3.0, 3.0),
    "hard_tanh": (-1.0, 1.0),
}
