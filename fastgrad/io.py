"""Save and load models as ``.npz`` files: parameters plus the architecture as JSON.

No pickle anywhere: arrays are written and read with ``allow_pickle=False`` and
the architecture is a JSON string of each layer's ``get_config()``.  Parameters
are stored under ``param/<name>``, buffers (state that is saved but not trained,
such as BatchNorm's running statistics) under ``buffer/<name>``.  Writes are
atomic (a temporary file in the same directory, fsync, ``os.replace``), so an
interrupted save leaves the previous file intact.  Every problem with a file
raises :class:`ModelFileError` (a ValueError) naming the file and the key, and
nothing is changed until the whole file has been checked.

The format (version 1)::

    __architecture__   JSON {"format": "fastgrad-model", "version": 1, "type": <layer type>, "config": <get_config()>}
    param/<name>       one array per entry of model.params, by its dotted name
    buffer/<name>      one array per entry of model.buffers

A Sequential's config is ``{"layers": [{"type": ..., "config": ...}, ...]}``.
Layers made of layers (a user block whose attribute ``inner`` is a Dense) need
nothing more: the block is rebuilt by its constructor, and the children's
trained arrays come from the file under their dotted names
(``param/0.inner.W``), not from the constructor's initialisation.  A block whose
constructor *takes* layers (``TwoBranch(left, right)``) may return them from
``get_config``; each Layer value (also inside lists and dicts) is stored as
``{"__layer__": {"type": ..., "config": ...}}`` and rebuilt before the block's
constructor is called.  Files written before layers had children hold none of
these and load unchanged.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import tempfile
import zipfile

import numpy as np

from .layers.base import Layer, is_builtin, layer_type
from .random import fork_rng

FORMAT = "fastgrad-model"
VERSION = 1
_ARCH_KEY = "__architecture__"
_PARAM_PREFIX = "param/"
_BUFFER_PREFIX = "buffer/"
#: a Layer value inside a config (a block's constructor argument) is stored as {_LAYER_KEY: {"type", "config"}}
_LAYER_KEY = "__layer__"
#: a saved architecture larger than this is refused (hostile or corrupt file)
MAX_ARCH_CHARS = 1 << 20


class ModelFileError(ValueError):
    """A model file that cannot be read, or does not match the model."""


def describe_model(model) -> dict:
    """The architecture saved with a model: format, version, type name and ``get_config()`` (JSON-able)."""
    return {"format": FORMAT, "version": VERSION, "type": layer_type(type(model)), "config": encode_config(model.get_config())}


def encode_config(value):
    """``value`` with every Layer in it (at any depth of lists, tuples and dicts) as ``{"__layer__": {type, config}}``."""
    if isinstance(value, Layer):
        return {_LAYER_KEY: {"type": layer_type(type(value)), "config": encode_config(value.get_config())}}
    if isinstance(value, (list, tuple)):
        return [encode_config(v) for v in value]
    if isinstance(value, dict):
        return {k: encode_config(v) for k, v in value.items()}
    return value


def _decode_config(value, where):
    """The inverse of :func:`encode_config`: each ``{"__layer__": ...}`` built into a layer."""
    if isinstance(value, dict):
        if _LAYER_KEY in value:
            entry = value[_LAYER_KEY]
            if set(value) != {_LAYER_KEY} or not isinstance(entry, dict) or set(entry) != {"type", "config"}:
                raise ModelFileError(f"{where}: a {_LAYER_KEY!r} entry must be {{'{_LAYER_KEY}': {{'type': ..., 'config': ...}}}}")
            return build(entry["type"], entry["config"], where)
        return {k: _decode_config(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_config(v, where) for v in value]
    return value


def _config_layers(value, path=""):
    """``[(path, layer)]`` of the Layer values inside a config."""
    if isinstance(value, Layer):
        return [(path, value)]
    if isinstance(value, (list, tuple)):
        return [item for i, v in enumerate(value) for item in _config_layers(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _config_layers(v, f"{path}[{k!r}]")]
    return []


def _is_sequential(cls, config) -> bool:
    """Sequential (or a subclass keeping its config): built from the list of its layers."""
    return issubclass(cls, Layer.registry["Sequential"]) and isinstance(config, dict) and set(config) == {"layers"}


def check_rebuildable(model, where: str = "save") -> None:
    """Refuse, before anything is written, a model that load could not rebuild.

    Every layer's ``get_config()`` must be JSON and must be accepted by its
    class's constructor (``type(layer)(**config)``); a user layer whose
    constructor takes arguments must define ``get_config``.  The error names
    the layer and what to add.
    """
    config = model.get_config()
    if _is_sequential(type(model), config):
        for i, layer in enumerate(model.layers):
            check_rebuildable(layer, f"{where}: layer {i}")
        return
    name = type(model).__qualname__
    for path, layer in _config_layers(config):
        check_rebuildable(layer, f"{where}: {name}.get_config(){path}")
    try:
        json.dumps(encode_config(config), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{where}: {name}.get_config() must return JSON values (int, float, str, bool, None, lists, dicts): {exc}"[:295]
        ) from None
    try:
        inspect.signature(type(model)).bind(**config)
    except TypeError as exc:
        raise TypeError(
            f"{where}: {name}(**get_config()) would fail ({exc}); define {name}.get_config() returning "
            f"{{**super().get_config(), ...}} with every constructor argument, e.g. {{'n': self.n}}"[:295]
        ) from None


def save(model, path) -> None:
    """Write ``model`` (a Layer or Sequential) to ``path`` atomically (.npz, no pickle)."""
    if not isinstance(model, Layer):
        raise TypeError(f"save: model must be a fastgrad Layer or Sequential, got {type(model).__name__}")
    path = os.fspath(path)
    check_rebuildable(model)
    arrays = {_PARAM_PREFIX + name: np.ascontiguousarray(arr) for name, arr in model.params.items()}
    arrays.update({_BUFFER_PREFIX + name: np.ascontiguousarray(arr) for name, arr in _buffers(model).items()})
    arrays[_ARCH_KEY] = np.array(json.dumps(describe_model(model)))
    write_atomic(path, lambda fh: np.savez(fh, **arrays), "save")


def write_atomic(path: str, write, where: str) -> None:
    """``write(fh)`` into a temporary file beside ``path``, fsync, then os.replace.

    An interrupted write leaves the previous file intact.  Errors name the
    user's path (never the hidden temporary file) and keep their type: a
    missing directory is still a FileNotFoundError.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fastgrad-", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        if not os.path.isdir(directory):
            reason = f"directory {directory} does not exist"
        else:
            reason = exc.strerror or type(exc).__name__
        raise type(exc)(exc.errno, f"{where}: cannot write {path}: {reason}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(tmp) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def _buffers(model) -> dict:
    """The model's buffers ({} for a layer without any, e.g. a user layer predating buffers)."""
    buffers = getattr(model, "buffers", None)
    return buffers if isinstance(buffers, dict) else {}


def _read(path) -> tuple[dict, dict]:
    """(architecture dict, {"param/<name>" or "buffer/<name>": array}) from a file, or ModelFileError."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            if _ARCH_KEY not in names:
                raise ModelFileError(f"load: {path}: missing key {_ARCH_KEY!r} (not a fastgrad model file)")
            arch_arr = data[_ARCH_KEY]
            if arch_arr.dtype.kind != "U" or arch_arr.shape != () or arch_arr.dtype.itemsize > 4 * MAX_ARCH_CHARS:
                raise ModelFileError(f"load: {path}: key {_ARCH_KEY!r} is not a JSON string of at most {MAX_ARCH_CHARS} chars")
            arch = json.loads(str(arch_arr))
            params = {}
            for name in names:
                if name == _ARCH_KEY:
                    continue
                if not name.startswith((_PARAM_PREFIX, _BUFFER_PREFIX)):
                    raise ModelFileError(f"load: {path}: unexpected key {name!r}")
                params[name] = data[name]
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, KeyError) as exc:
        raise ModelFileError(f"load: {path}: not a readable fastgrad model file ({type(exc).__name__}: {exc})"[:290]) from None
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise ModelFileError(f"load: {path}: key {_ARCH_KEY!r} does not describe a fastgrad model")
    if arch.get("version") != VERSION:
        raise ModelFileError(f"load: {path}: format version {arch.get('version')!r} is not supported (expected {VERSION})")
    return arch, params


def layer_class(kind, where: str = "load") -> type:
    """The class a file's type name denotes, or ModelFileError.

    A short name is a built-in layer (:attr:`Layer.registry`).  ``module:qualname``
    is a user class, looked up only in modules already imported: a file never
    makes fastgrad import anything, so the error says which module to import.
    """
    if not isinstance(kind, str) or len(kind) > 300:
        raise ModelFileError(f"{where}: unknown layer type {str(kind)[:60]!r}")
    if ":" not in kind:
        if kind not in Layer.registry:
            raise ModelFileError(f"{where}: unknown layer type {kind!r}")
        return Layer.registry[kind]
    module_name, _, qualname = kind.partition(":")
    parts = qualname.split(".")
    if "<locals>" in parts:
        raise ModelFileError(
            f"{where}: layer class {kind!r} was defined inside a function, so load cannot find it; define it at module "
            "level, or build the model yourself and call fastgrad.load_weights"
        )
    if not all(p.isidentifier() for p in module_name.split(".") + parts):
        raise ModelFileError(f"{where}: unknown layer type {kind!r}")
    module = sys.modules.get(module_name)
    if module is None:
        raise ModelFileError(
            f"{where}: layer class {qualname} comes from module {module_name}, which is not imported; "
            f"import {module_name} before loading (fastgrad never imports a module named in a file)"
        )
    found = module
    for part in parts:
        # the class's own namespace only: no module __getattr__ (which may import) runs
        found = vars(found).get(part) if hasattr(found, "__dict__") else None
    # the class itself, under its own name (not an alias, not a fastgrad internal reached by a path)
    if not (isinstance(found, type) and issubclass(found, Layer)) or is_builtin(found) or layer_type(found) != kind:
        raise ModelFileError(f"{where}: module {module_name} has no user Layer class {qualname!r}")
    return found


def build(kind: str, config: dict, where: str = "load"):
    """Construct a layer (or Sequential) from its type name and get_config() dict."""
    cls = layer_class(kind, where)
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ModelFileError(f"{where}: config of {kind} must be an object with string keys")
    try:
        if cls is Layer.registry["Sequential"] or _is_sequential(cls, config):
            layers = config.get("layers")
            if not isinstance(layers, list) or set(config) != {"layers"}:
                raise ModelFileError(f"{where}: Sequential config must be {{'layers': [...]}}")
            built = []
            for i, item in enumerate(layers):
                if not isinstance(item, dict) or set(item) != {"type", "config"}:
                    raise ModelFileError(f"{where}: layer {i} must be {{'type': ..., 'config': ...}}")
                built.append(build(item["type"], item["config"], where))
            return cls(*built)
        return cls(**_decode_config(config, where))
    except ModelFileError:
        raise
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: cannot build {kind} from its config ({exc})"[:290]) from None


def _stored(model) -> dict:
    """The model's arrays a file holds, by file key: parameters, then buffers."""
    out = {_PARAM_PREFIX + name: arr for name, arr in model.params.items()}
    out.update({_BUFFER_PREFIX + name: arr for name, arr in _buffers(model).items()})
    return out


def _check_params(model, params: dict, path) -> None:
    expected = _stored(model)
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing:
        raise ModelFileError(f"load: {path}: missing {_key_kind(missing[0])} key {_key_name(missing[0])!r}")
    if extra:
        raise ModelFileError(f"load: {path}: unexpected {_key_kind(extra[0])} key {_key_name(extra[0])!r}")
    for key, arr in expected.items():
        got = params[key]
        name = _key_name(key)
        if got.shape != arr.shape:
            raise ModelFileError(f"load: {path}: key {name!r} has shape {got.shape}, the model needs {arr.shape}")
        if got.dtype != arr.dtype:
            raise ModelFileError(f"load: {path}: key {name!r} has dtype {got.dtype}, the model needs {arr.dtype}")


def _key_kind(key: str) -> str:
    return "parameter" if key.startswith(_PARAM_PREFIX) else "buffer"


def _key_name(key: str) -> str:
    return key.split("/", 1)[1]


def _copy_into(model, params: dict) -> None:
    for key, arr in _stored(model).items():
        arr[...] = params[key]


def load(path):
    """Read a model written by :func:`save`; returns a new Layer/Sequential, bitwise equal."""
    arch, params = _read(path)
    with fork_rng():  # the initial weights drawn here are overwritten: keep the default generator's stream
        model = build(arch.get("type"), arch.get("config"), where=f"load: {os.fspath(path)}")
    _check_params(model, params, os.fspath(path))
    _copy_into(model, params)
    return model


def load_weights(model, path) -> None:
    """Copy the parameters (and buffers) saved in ``path`` into an existing ``model``.

    The file must describe the same architecture and hold the same parameter
    names, shapes and dtypes; every check runs before any parameter is written,
    so on error the model is unchanged.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"load_weights: model must be a fastgrad Layer or Sequential, got {type(model).__name__}")
    arch, params = _read(path)
    mine = json.loads(json.dumps(describe_model(model)))
    if arch.get("type") != mine["type"] or arch.get("config") != mine["config"]:
        raise ModelFileError(
            f"load_weights: {os.fspath(path)}: the file's architecture ({arch.get('type')!r}) does not match the model's"
            f" ({mine['type']!r})"[:295]
        )
    _check_params(model, params, os.fspath(path))
    _copy_into(model, params)
