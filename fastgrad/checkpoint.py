"""Training checkpoints: model, optimizer, epoch, random state and extras in one ``.npz``, no pickle.

``save_checkpoint(path, model, optimizer, epoch, **extra)`` writes atomically
(temporary file + ``os.replace``).  Inside: a JSON header (key
``__checkpoint__``) with the architecture (as ``fg.save``), the frozen layers,
the epoch, ``fg.get_rng_state()``, the optimizer's type, hyperparameters and
step count, and the extras; every array (parameters, optimizer buffers, array
extras) is its own ``.npy`` member referenced from the header.

``load_checkpoint(path)`` checks everything before returning and builds new
objects only (nothing global changes), refusing hostile files as ``fg.load``
does: every problem raises :class:`~fastgrad.io.ModelFileError` naming the
file and the key.  Resuming a run bitwise::

    ck = fg.load_checkpoint("run.npz")
    fg.set_rng_state(ck.rng_state)                     # dropout / seed=None layers continue too
    ck.model.fit(x, y, loss, ck.optimizer, epochs=10, initial_epoch=ck.epoch)
"""

from __future__ import annotations

import json
import numbers
import os
import zipfile

import numpy as np

from .io import ModelFileError, build, describe_model, write_atomic
from .layers.base import Layer, walk
from .optim import Optimizer
from .random import check_rng_state, fork_rng, get_rng_state
from .state import state_arrays

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "walk_layers", "FORMAT", "VERSION"]

FORMAT = "fastgrad-checkpoint"
VERSION = 1
HEADER_KEY = "__checkpoint__"
#: a header (JSON) longer than this is refused on save and on load; store big data as arrays
MAX_HEADER_CHARS = 1 << 22
_MODEL_PREFIX = "model/"
_TREE_PREFIX = "tree/"
_ARRAY_REF = "__array__"


class Checkpoint:
    """What :func:`load_checkpoint` returns.

    ``model``: the model, built from the saved architecture with its weights
    and frozen layers; ``optimizer``: the optimizer rebuilt on ``model`` (same
    type, hyperparameters, learning rate, step count and buffers) or None;
    ``epoch``: the number of epochs completed (pass it as ``initial_epoch``);
    ``extra``: the keyword extras (arrays, numbers, strings, lists, dicts);
    ``rng_state``: ``fg.get_rng_state()`` at saving time (for ``fg.set_rng_state``).
    """

    def __init__(self, model, optimizer, epoch, extra, rng_state, path):
        self.model, self.optimizer, self.epoch = model, optimizer, epoch
        self.extra, self.rng_state, self.path = extra, rng_state, path
        #: the optimizer's learning rate as saved (restore_callbacks puts it back)
        self.saved_lr = None if optimizer is None else optimizer.lr

    def restore_callbacks(self, callbacks) -> None:
        """Load the callback states that ``ModelCheckpoint`` saved into the same list of callbacks.

        Schedules, EarlyStopping and ModelCheckpoint continue where they were.
        Building a schedule takes a first step that may change the optimizer's
        rate (as in PyTorch), so each schedule's optimizer gets the saved rate back.
        """
        states = self.extra.get("callbacks")
        if not isinstance(states, list) or len(states) != len(callbacks):
            got = len(states) if isinstance(states, list) else "none"
            raise ValueError(
                f"restore_callbacks: {self.path}: the checkpoint holds {got} callback states, {len(callbacks)} callbacks given"
            )
        for cb, state in zip(callbacks, states):
            if state is not None:
                cb.load_state_dict(state)
        if self.optimizer is not None:
            for cb in callbacks:
                if hasattr(getattr(cb, "optimizer", None), "lr"):
                    cb.optimizer.lr = self.saved_lr

    def __repr__(self):
        opt = type(self.optimizer).__name__ if self.optimizer is not None else None
        model = type(self.model).__name__
        return f"Checkpoint(path={self.path!r}, model={model}, optimizer={opt}, epoch={self.epoch}, extra={sorted(self.extra)})"


def walk_layers(model):
    """``(path, layer)`` for ``model`` ("") and every layer in its tree ("0", "1", "0.inner", nested "0.2"), parents first."""
    return walk(model)


def _layer_at(model, path, where):
    layer = dict(walk(model)).get(path) if isinstance(path, str) else None
    if layer is None:
        raise ModelFileError(f"{where}: layer path {path!r} does not exist in the saved model"[:290])
    return layer


# -- a tree of plain values with arrays stored beside it -----------------------------------------

def _encode(value, key, arrays, where):
    """JSON-able copy of ``value``; each ndarray moves to ``arrays`` and is replaced by a reference."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (numbers.Integral, np.integer)):
        return int(value)
    if isinstance(value, (numbers.Real, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{where}: {key} must be a numeric array, got dtype {value.dtype}")
        name = f"{_TREE_PREFIX}{len(arrays)}"
        arrays[name] = np.ascontiguousarray(value)
        return {_ARRAY_REF: name}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{key}[{i}]", arrays, where) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str) or k == _ARRAY_REF:
                raise TypeError(f"{where}: {key} must have string keys other than {_ARRAY_REF!r}, got {k!r}"[:290])
        return {k: _encode(v, f"{key}[{k!r}]", arrays, where) for k, v in value.items()}
    raise TypeError(f"{where}: {key} must hold numbers, strings, lists, dicts or numpy arrays, got {type(value).__name__}"[:290])


def _decode(value, arrays, used, where):
    if isinstance(value, list):
        return [_decode(v, arrays, used, where) for v in value]
    if isinstance(value, dict):
        if set(value) == {_ARRAY_REF}:
            name = value[_ARRAY_REF]
            if not isinstance(name, str) or not name.startswith(_TREE_PREFIX) or name not in arrays:
                raise ModelFileError(f"{where}: missing array {name!r}"[:290])
            used.add(name)
            return arrays[name]
        return {k: _decode(v, arrays, used, where) for k, v in value.items()}
    return value


# -- save / load ---------------------------------------------------------------------------------

def _plain_optimizer(optimizer, where):
    if optimizer is None or isinstance(optimizer, Optimizer):
        return optimizer
    inner = getattr(optimizer, "optimizer", None)  # distributed.DistributedOptimizer wraps one
    if isinstance(inner, Optimizer):
        return inner
    raise TypeError(f"{where}: optimizer must be a fastgrad optimizer or None, got {type(optimizer).__name__}")


def save_checkpoint(path, model, optimizer, epoch, **extra) -> None:
    """Write model, optimizer state, ``epoch`` (epochs completed), the random state and ``extra`` to ``path``.

    ``optimizer`` may be None; it must train layers of ``model``.  ``extra``
    values: numbers, strings, None, lists, dicts with string keys and numeric
    numpy arrays (all copied into the file).  One ``.npz``, atomic, no pickle.
    """
    where = "save_checkpoint"
    if not isinstance(model, Layer):
        raise TypeError(f"{where}: model must be a fastgrad Layer or Sequential, got {type(model).__name__}")
    optimizer = _plain_optimizer(optimizer, where)
    if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (numbers.Integral, np.integer)) or epoch < 0:
        raise TypeError(f"{where}: epoch must be an int >= 0 (epochs completed), got {epoch!r}"[:290])
    path = os.fspath(path)
    paths = {}
    for layer_path, layer in walk_layers(model):
        paths.setdefault(id(layer), layer_path)
    arrays = {_MODEL_PREFIX + name: np.ascontiguousarray(p) for name, p in state_arrays(model).items()}  # params, buffers
    header = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": describe_model(model),
        "frozen": [layer_path for layer_path, layer in walk_layers(model) if not layer.trainable],
        "epoch": int(epoch),
        "rng_state": get_rng_state(),
        "optimizer": None,
        "extra": _encode(extra, "extra", arrays, where),
    }
    if optimizer is not None:
        sources = optimizer.model if isinstance(optimizer.model, (list, tuple)) else [optimizer.model]
        on = [paths.get(id(layer)) for layer in sources]
        if None in on:
            raise ValueError(f"{where}: the optimizer trains layers that are not part of model")
        header["optimizer"] = {
            "on": on if isinstance(optimizer.model, (list, tuple)) else on[0],
            "state": _encode(optimizer.state_dict(), "optimizer state", arrays, where),
        }
    text = json.dumps(header)
    if len(text) > MAX_HEADER_CHARS:
        raise ValueError(f"{where}: the header is {len(text)} characters (limit {MAX_HEADER_CHARS}); store large extras as numpy arrays")
    arrays[HEADER_KEY] = np.array(text)
    write_atomic(path, lambda fh: np.savez(fh, **arrays), where)


def _read_arrays(path, where) -> tuple:
    """(header dict, {key: array}) of a checkpoint file, or ModelFileError."""
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):  # a plain .npy file gives an array
            raise ModelFileError(f"{where}: not an .npz archive")
        with data:
            if HEADER_KEY not in data.files:
                raise ModelFileError(f"{where}: missing key {HEADER_KEY!r} (not a fastgrad checkpoint)")
            raw = data[HEADER_KEY]
            if raw.dtype.kind != "U" or raw.shape != () or raw.dtype.itemsize > 4 * MAX_HEADER_CHARS:
                raise ModelFileError(f"{where}: key {HEADER_KEY!r} is not a JSON string of at most {MAX_HEADER_CHARS} characters")
            header = json.loads(str(raw))
            arrays = {name: data[name] for name in data.files if name != HEADER_KEY}
    except (ModelFileError, FileNotFoundError):
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, RecursionError) as exc:
        raise ModelFileError(f"{where}: not a readable fastgrad checkpoint ({type(exc).__name__}: {exc})"[:290]) from None
    for name, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise ModelFileError(f"{where}: key {name!r} has dtype {arr.dtype}, not a number type")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{where}: key {HEADER_KEY!r} does not describe a fastgrad checkpoint")
    if header.get("version") != VERSION:
        raise ModelFileError(f"{where}: format version {header.get('version')!r} is not supported (expected {VERSION})")
    expected = {"format", "version", "architecture", "frozen", "epoch", "rng_state", "optimizer", "extra"}
    if set(header) != expected:
        raise ModelFileError(f"{where}: header keys {sorted(header)} differ from {sorted(expected)}"[:290])
    return header, arrays


def _build_model(header, arrays, where):
    arch = header["architecture"]
    if not isinstance(arch, dict):
        raise ModelFileError(f"{where}: 'architecture' must be an object")
    with fork_rng():  # the initial weights drawn here are overwritten: keep the default generator's stream
        model = build(arch.get("type"), arch.get("config"), where=where)
    state = {name[len(_MODEL_PREFIX):]: arr for name, arr in arrays.items() if name.startswith(_MODEL_PREFIX)}
    expected = state_arrays(model)  # parameters, then buffers (BatchNorm's running statistics)
    for name, p in expected.items():
        if name not in state:
            raise ModelFileError(f"{where}: missing parameter key {name!r}")
        if state[name].shape != p.shape or state[name].dtype != p.dtype:
            raise ModelFileError(f"{where}: key {name!r} is {state[name].dtype} {state[name].shape}, the model needs {p.dtype} {p.shape}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ModelFileError(f"{where}: unexpected parameter key {extra[0]!r}"[:290])
    model.load_state_dict(state)
    frozen = header["frozen"]
    if not isinstance(frozen, list) or not all(isinstance(p, str) for p in frozen):
        raise ModelFileError(f"{where}: 'frozen' must be a list of layer paths")
    for layer_path in frozen:
        _layer_at(model, layer_path, where).trainable = False
    return model


def _build_optimizer(entry, model, arrays, used, where):
    if entry is None:
        return None
    if not isinstance(entry, dict) or set(entry) != {"on", "state"}:
        raise ModelFileError(f"{where}: 'optimizer' must be null or an object with 'on' and 'state'")
    on = entry["on"]
    if isinstance(on, list):
        source = [_layer_at(model, p, where) if isinstance(p, str) else None for p in on]
        if None in source or not source:
            raise ModelFileError(f"{where}: optimizer 'on' must list layer paths")
    elif isinstance(on, str):
        source = _layer_at(model, on, where)
    else:
        raise ModelFileError(f"{where}: optimizer 'on' must be a layer path or a list of them")
    state = _decode(entry["state"], arrays, used, where)
    kind = state.get("type") if isinstance(state, dict) else None
    config = state.get("config") if isinstance(state, dict) else None
    if kind not in Optimizer.registry or not isinstance(config, dict):
        raise ModelFileError(f"{where}: unknown optimizer type {kind!r}"[:290])
    try:
        # built with a placeholder rate: the saved one (possibly 0 at the end of a schedule) comes with the state
        optimizer = Optimizer.registry[kind](source, **{**config, "lr": 1.0})
        optimizer.load_state_dict(state)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{where}: optimizer state refused ({exc})"[:290]) from None
    return optimizer


def load_checkpoint(path) -> Checkpoint:
    """Read a file written by :func:`save_checkpoint`; returns a :class:`Checkpoint` of new objects."""
    path = os.fspath(path)
    where = f"load_checkpoint: {path}"
    header, arrays = _read_arrays(path, where)
    epoch = header["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ModelFileError(f"{where}: 'epoch' must be an int >= 0, got {epoch!r}"[:290])
    try:
        rng_state = check_rng_state(header["rng_state"], "key 'rng_state'")
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: {exc}"[:290]) from None
    model = _build_model(header, arrays, where)
    used = {name for name in arrays if name.startswith(_MODEL_PREFIX)}
    optimizer = _build_optimizer(header["optimizer"], model, arrays, used, where)
    extra = _decode(header["extra"], arrays, used, where)
    if not isinstance(extra, dict):
        raise ModelFileError(f"{where}: 'extra' must be an object")
    unused = sorted(set(arrays) - used)
    if unused:
        raise ModelFileError(f"{where}: unexpected key {unused[0]!r}"[:290])
    return Checkpoint(model, optimizer, epoch, extra, rng_state, path)
