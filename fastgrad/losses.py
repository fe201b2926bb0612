"""Loss objects: ``value = loss(pred, target)``; ``dpred = loss.backward()``.

Both average over the batch like PyTorch's ``reduction='mean'``.
"""

from __future__ import annotations

import numpy as np

from . import functional as F
from ._checks import as_array


def _reduction(reduction, where):
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{where}: reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction


class Loss:
    """Base: remembers the gradient of the last call for ``backward``."""

    def __init__(self, reduction="mean"):
        self.reduction = _reduction(reduction, type(self).__name__)
        self._grad = None

    def backward(self):
        """dL/dpred of the last call (same shape and dtype as pred)."""
        if self._grad is None:
            raise ValueError(f"{type(self).__name__}.backward: called before the loss was computed")
        return self._grad

    def get_config(self):
        return {"reduction": self.reduction}


class MSELoss(Loss):
    """L = mean over all elements of (pred - target)^2 (PyTorch's MSELoss).

    dL/dpred = 2 (pred - target) / numel   ("sum": without the division).
    """

    def __call__(self, pred, target):
        where = "MSELoss"
        pred = as_array(pred, "pred", where)
        target = as_array(target, "target", where, dtype=pred.dtype)
        if target.shape != pred.shape:
            raise ValueError(f"{where}: target.shape={target.shape} does not match pred.shape={pred.shape}")
        if pred.size == 0:
            raise ValueError(f"{where}: pred is empty (shape {pred.shape})")
        diff = pred - target
        scale = 1.0 / pred.size if self.reduction == "mean" else 1.0
        self._grad = (2.0 * scale) * diff
        with np.errstate(over="ignore"):  # an overflow is returned as inf; fit() reports it
            return float(np.sum(diff.astype(np.float64) ** 2) * scale)


class CrossEntropyLoss(Loss):
    """Cross-entropy from logits (log-softmax fused in), like PyTorch's CrossEntropyLoss.

    target: int class labels (N,) or probabilities (N, C).
    """

    def __call__(self, logits, target):
        loss, self._grad = F.cross_entropy(logits, target, reduction=self.reduction)
        return loss
