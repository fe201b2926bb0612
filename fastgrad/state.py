"""Model state dicts: copies of the parameters and buffers, and loading them back with every check first.

``layer.state_dict()`` and ``layer.load_state_dict(d, strict=True)`` (any Layer,
Sequential included) call these.  A state dict is a plain ``{name: ndarray}``
with the names of ``layer.params`` ("0.W", "1.b", ... for a Sequential) followed
by those of ``layer.buffers`` (BatchNorm's "2.running_mean", ..., as PyTorch's
state dicts hold buffers too); the arrays are copies, so training on does not
change a saved state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

__all__ = ["IncompatibleKeys", "state_arrays", "copy_state", "load_state"]


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` skipped (as PyTorch's result)."""

    missing_keys: list
    unexpected_keys: list


def state_arrays(layer) -> dict:
    """The layer's own arrays a state dict holds: ``params``, then ``buffers`` (if the layer has any)."""
    buffers = getattr(layer, "buffers", None)
    return {**layer.params, **(buffers if isinstance(buffers, Mapping) else {})}


def copy_state(layer) -> dict:
    """``{name: copy}`` of every parameter (``layer.params`` order), then every buffer."""
    return {name: p.copy() for name, p in state_arrays(layer).items()}


def _short(keys) -> str:
    keys = [str(k) for k in keys]
    return ", ".join(repr(k) for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_state(layer, state, strict=True, where=None) -> IncompatibleKeys:
    """Copy the arrays of ``state`` into ``layer``'s own parameter and buffer arrays (which keep their identity).

    ``state``: a mapping ``name -> float array`` as from :func:`copy_state`, or a
    model whose parameters are copied.  Each array must have the parameter's
    shape and a float dtype; it is converted to the parameter's dtype (float64
    into a float32 model is rounded, as documented for inputs).  ``strict=True``:
    the names must match exactly; ``strict=False``: the common names are loaded
    and the others returned.  Nothing is written unless every check passes.
    """
    where = where or f"{type(layer).__name__}.load_state_dict"
    if not isinstance(strict, (bool, np.bool_)):
        raise TypeError(f"{where}: strict must be True or False, got {type(strict).__name__}")
    if not isinstance(state, Mapping) and hasattr(state, "params") and hasattr(state, "state_dict"):
        state = state_arrays(state)
    if not isinstance(state, Mapping):
        raise TypeError(f"{where}: state must be a dict name -> array (from state_dict()), got {type(state).__name__}")
    params = state_arrays(layer)
    missing = [name for name in params if name not in state]
    unexpected = [name for name in state if name not in params]
    if strict and (missing or unexpected):
        parts = ([f"missing keys {_short(missing)}"] if missing else []) + ([f"unexpected keys {_short(unexpected)}"] if unexpected else [])
        raise ValueError(f"{where}: the state does not match the model's parameters: {'; '.join(parts)}"[:290])
    checked = {}
    for name, param in params.items():
        if name not in state:
            continue
        value = state[name]
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{where}: state[{name!r}] must be a numpy array, got {type(value).__name__}")
        if value.dtype.kind != "f":
            raise TypeError(f"{where}: state[{name!r}] must be a float array, got dtype {value.dtype}")
        if value.shape != param.shape:
            raise ValueError(f"{where}: state[{name!r}] has shape {value.shape}, the parameter has {param.shape}")
        checked[name] = value
    for name, value in checked.items():
        params[name][...] = value
    return IncompatibleKeys(missing, unexpected)
