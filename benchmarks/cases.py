"""The benchmark cases, shared by every peer, the runner, the report and the smoke test.

One table of cases (numbagg's style): each case is an op, a size label and a shape
from :mod:`fastgrad.cases` (the table ``python -m fastgrad check`` and the tests use too).
Inputs are made here from a fixed seed, so every peer (each in its own process)
times exactly the same numbers and the correctness guard can compare outputs.

FLOP formulas (``flops``) count 2 FLOPs per multiply-add (2 * MACs) and ignore
the O(output) element-wise work (bias, activation), except for softmax, which is
nothing but element-wise work (see ``flops``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# the shapes and training-step architectures live in fastgrad's one case table (re-exported here)
from fastgrad.cases import CNN_BLOCKS, CNN_DENSE, CNN_IMAGE, MLP_LAYERS, SHAPE_NAMES, SHAPES, TRAIN_LR

__all__ = [
    "CNN_BLOCKS", "CNN_DENSE", "CNN_IMAGE", "MLP_LAYERS", "SHAPE_NAMES", "SHAPES", "TRAIN_LR", "OPS", "PASSES", "DTYPES",
    "Case", "all_cases", "case_from_id", "flops", "make_inputs", "targets", "COMPILE_TARGETS", "NotAvailable",
]

#: every op in report order; the training steps are end-to-end, not one kernel
OPS = ("dense", "conv2d", "lstm", "softmax", "train_mlp", "train_cnn")
PASSES = ("fwd", "fwd+bwd")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Case:
    op: str
    size: str
    shape: tuple

    @property
    def id(self) -> str:
        return f"{self.op}/{self.size}"


def all_cases(ops=OPS, sizes=("S", "M", "L")) -> list:
    """Cases for ``ops`` restricted to ``sizes`` (the training steps only have "S")."""
    return [Case(op, size, SHAPES[op][size]) for op in ops for size in SHAPES[op] if size in sizes]


def case_from_id(case_id: str) -> Case:
    op, size = case_id.split("/")
    return Case(op, size, SHAPES[op][size])


# --------------------------------------------------------------------------
# FLOP formulas
# --------------------------------------------------------------------------


def _mlp_macs(batch: int) -> int:
    return batch * sum(n_in * n_out for n_in, n_out, _ in MLP_LAYERS)


def _cnn_macs(batch: int) -> int:
    _, h, w = CNN_IMAGE
    macs = 0
    for c_in, c_out, k, pad in CNN_BLOCKS:
        ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
        macs += batch * c_out * ho * wo * c_in * k * k
        h, w = ho // 2, wo // 2
    return macs + batch * CNN_DENSE[0] * CNN_DENSE[1]


def flops(op: str, shape: tuple, pass_: str) -> float:
    """FLOPs of one call; ``pass_`` is "fwd" or "fwd+bwd".

    dense   (N, n, m):       fwd 2 N n m;  bwd dx and dW are 2 N n m each  -> fwd+bwd 6 N n m
    conv2d  (N, C, H, M, k): stride 1, no padding, Ho = H - k + 1;  MACs = N M Ho Ho C k k;
                             fwd 2 MACs; bwd dX (full convolution) and dK 2 MACs each -> 6 MACs
    lstm    (T, N, I, H):    MACs = T N 4H (H + I) (the 4 gate matmuls on [h, x]);
                             fwd 2 MACs; bwd dW and d[h, x] 2 MACs each -> 6 MACs
    softmax (N, n):          memory bound, counted per element: fwd 4 N n (subtract max, exp,
                             sum, scale); bwd 4 N n (product, sum, subtract, product) -> 8 N n
    train_*:                 every layer's MACs as above, fwd 2 MACs, step 6 MACs (counted as if
                             the first layer's dx were computed, which no peer does); pooling/loss/SGD not counted
    """
    per_mac = 2.0 if pass_ == "fwd" else 6.0
    if op == "dense":
        n, i, o = shape
        return per_mac * n * i * o
    if op == "conv2d":
        n, c, h, m, k = shape
        ho = h - k + 1
        return per_mac * n * m * ho * ho * c * k * k
    if op == "lstm":
        t, n, i, h = shape
        return per_mac * t * n * 4 * h * (h + i)
    if op == "softmax":
        n, d = shape
        return (4.0 if pass_ == "fwd" else 8.0) * n * d
    if op == "train_mlp":
        return per_mac * _mlp_macs(shape[0])
    if op == "train_cnn":
        return per_mac * _cnn_macs(shape[0])
    raise ValueError(f"unknown op {op!r}")


# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------


def _uniform(rng, shape, fan_in, dtype):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(dtype)


def make_inputs(op: str, shape: tuple, dtype, seed: int = 0) -> dict:
    """The arrays of one case, identical in every process (fixed seed, generated in float64).

    dense:  x (N, n), W (m, n), b (m,), dy (N, m)
    conv2d: x (N, C, H, H), K (M, C, k, k), B (M,), dy (N, M, Ho, Ho)
    lstm:   x (T, N, I), W (4, H, H + I) gates (f, i, o, n) on [h, x], b (4, H), dy (T, N, H)
    softmax: x (N, n) logits of spread ~3, dy (N, n)
    train_mlp: x (B, 64), labels (B,), params [W0, b0, W1, b1, W2, b2] (Dense layout (out, in))
    train_cnn: x (B, 1, 8, 8), labels (B,), params [K0, B0, K1, B1, W2, b2]
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)

    def normal(*s, scale=1.0):
        return (scale * rng.standard_normal(s)).astype(dtype)

    if op == "dense":
        n, i, o = shape
        return {"x": normal(n, i), "W": _uniform(rng, (o, i), i, dtype), "b": _uniform(rng, (o,), i, dtype), "dy": normal(n, o)}
    if op == "conv2d":
        n, c, h, m, k = shape
        ho = h - k + 1
        fan_in = c * k * k
        return {
            "x": normal(n, c, h, h),
            "K": _uniform(rng, (m, c, k, k), fan_in, dtype),
            "B": _uniform(rng, (m,), fan_in, dtype),
            "dy": normal(n, m, ho, ho),
        }
    if op == "lstm":
        t, n, i, h = shape
        return {
            "x": normal(t, n, i),
            "W": _uniform(rng, (4, h, h + i), h + i, dtype),
            "b": _uniform(rng, (4, h), h + i, dtype),
            "dy": normal(t, n, h),
        }
    if op == "softmax":
        n, d = shape
        return {"x": normal(n, d, scale=3.0), "dy": normal(n, d)}
    if op == "train_mlp":
        (batch,) = shape
        params = []
        for n_in, n_out, _ in MLP_LAYERS:
            params += [_uniform(rng, (n_out, n_in), n_in, dtype), _uniform(rng, (n_out,), n_in, dtype)]
        return {"x": normal(batch, MLP_LAYERS[0][0]), "labels": rng.integers(0, 10, batch), "params": params}
    if op == "train_cnn":
        (batch,) = shape
        params = []
        for c_in, c_out, k, _ in CNN_BLOCKS:
            params += [_uniform(rng, (c_out, c_in, k, k), c_in * k * k, dtype), _uniform(rng, (c_out,), c_in * k * k, dtype)]
        n_in, n_out = CNN_DENSE
        params += [_uniform(rng, (n_out, n_in), n_in, dtype), _uniform(rng, (n_out,), n_in, dtype)]
        return {"x": normal(batch, *CNN_IMAGE), "labels": rng.integers(0, 10, batch), "params": params}
    raise ValueError(f"unknown op {op!r}")


# --------------------------------------------------------------------------
# targets (issues 13, 14 and 22): printed next to each row as met / not met
# --------------------------------------------------------------------------


def targets(op: str, size: str, pass_: str, dtype: str = "float32") -> list:
    """Targets for one row as (kind, peer, threshold) tuples.

    kind "ratio": peer_time / fastgrad_time >= threshold (forward+backward rows);
    kind "peak":  fastgrad GFLOP/s >= threshold % of the NumPy GEMM peak of the same dtype.
    """
    if op == "dense" and pass_ == "fwd":
        return [("peak", "numpy", 85.0)] if size == "L" else []
    if pass_ != "fwd+bwd":
        return []
    if op == "dense":
        return [("ratio", "torch", 1.0)]
    if op in ("conv2d", "lstm"):
        return [("ratio", "torch", 1.0 if dtype == "float32" else 1.5)]
    if op == "softmax":
        return [("ratio", "torch", 2.0)]
    if op == "train_cnn":  # issue 22
        return [("ratio", "torch", 1.3), ("ratio", "jax", 1.0)]
    if op == "train_mlp":
        return [("ratio", "torch", 2.0), ("ratio", "jax", 1.0)]
    return []


#: compile-time targets in seconds (cold: every kernel for one dtype; warm: import + first MLP step)
COMPILE_TARGETS = {"cold": 30.0, "warm": 1.0}


class NotAvailable(RuntimeError):
    """A peer does not implement an op (yet): the case is reported as "n/a", the run goes on."""
