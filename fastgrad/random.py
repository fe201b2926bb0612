"""The default random generator: one seed for initialisation, dropout and shuffling.

Everything random in fastgrad that is not given its own ``seed`` draws from one
process-wide NumPy generator (PCG64), as ``torch.manual_seed`` does for PyTorch:

* layers built with ``seed=None`` take their initial weights from it
  (:func:`init_generator`), one after the other, so two layers differ and a
  script run twice builds bitwise the same model;
* dropout masks draw from it (:func:`default_generator`);
* ``fit(..., seed=None)`` shuffles with :func:`initial_seed`, the seed last given
  to :func:`manual_seed`: the order of epoch ``e`` depends only on (seed, e), so a
  resumed run repeats it.

The generator starts seeded with :data:`DEFAULT_SEED` (0), so results are
reproducible even without :func:`manual_seed`; call ``manual_seed(s)`` with
different ``s`` for different runs.  ``get_rng_state()`` / ``set_rng_state()``
save and restore it (``fg.save_checkpoint`` stores the state).
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np

__all__ = [
    "DEFAULT_SEED",
    "default_generator",
    "manual_seed",
    "initial_seed",
    "get_rng_state",
    "set_rng_state",
    "init_generator",
    "epoch_generator",
    "check_seed",
    "check_rng_state",
    "fork_rng",
]

#: the seed the default generator starts from when manual_seed is never called
DEFAULT_SEED = 0

_BIT_GENERATOR = "PCG64"
_state = {"seed": DEFAULT_SEED, "generator": np.random.Generator(np.random.PCG64(DEFAULT_SEED))}


def check_seed(seed, where: str) -> int:
    """``seed`` as an int >= 0 (TypeError for bools, floats and others; ValueError if negative)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{where}: seed must be an int >= 0, got {type(seed).__name__} {seed!r}"[:290])
    if seed < 0:
        raise ValueError(f"{where}: seed must be >= 0, got {seed}")
    return int(seed)


def default_generator() -> np.random.Generator:
    """The process-wide generator (dropout and ``seed=None`` layers draw from it)."""
    return _state["generator"]


def manual_seed(seed) -> np.random.Generator:
    """Reseed the default generator with ``seed`` (an int >= 0); returns it.

    After ``fg.manual_seed(s)`` the same script builds and trains bitwise the
    same model: initialisation of ``seed=None`` layers, dropout and the shuffle
    of ``fit(..., seed=None)`` all follow from ``s``.
    """
    seed = check_seed(seed, "manual_seed")
    _state["seed"] = seed
    _state["generator"] = np.random.Generator(np.random.PCG64(seed))
    return _state["generator"]


def initial_seed() -> int:
    """The seed of the last :func:`manual_seed` (``DEFAULT_SEED`` if never called)."""
    return _state["seed"]


def get_rng_state() -> dict:
    """A copy of the default generator's state: ``{"seed": int, "bit_generator": "PCG64", "state": {...}}``.

    Plain ints and strings only (JSON-able), so it can be stored in a checkpoint.
    """
    bit = _state["generator"].bit_generator.state
    return {
        "seed": _state["seed"],
        "bit_generator": bit["bit_generator"],
        "state": {"state": int(bit["state"]["state"]), "inc": int(bit["state"]["inc"])},
        "has_uint32": int(bit["has_uint32"]),
        "uinteger": int(bit["uinteger"]),
    }


def check_rng_state(state, where: str = "set_rng_state") -> dict:
    """Validate a :func:`get_rng_state` dict without applying it (TypeError/ValueError)."""
    keys = {"seed", "bit_generator", "state", "has_uint32", "uinteger"}
    if not isinstance(state, dict) or set(state) != keys:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise TypeError(f"{where}: state must be a dict with keys {sorted(keys)} (from get_rng_state), got {got}"[:290])
    if state["bit_generator"] != _BIT_GENERATOR:
        raise ValueError(f"{where}: bit_generator must be {_BIT_GENERATOR!r}, got {state['bit_generator']!r}"[:290])
    inner = state["state"]
    if not isinstance(inner, dict) or set(inner) != {"state", "inc"}:
        raise TypeError(f"{where}: state['state'] must be a dict with keys 'inc' and 'state'")
    for name, value, bound in (
        ("state['state']['state']", inner["state"], 1 << 128),
        ("state['state']['inc']", inner["inc"], 1 << 128),
        ("state['has_uint32']", state["has_uint32"], 2),
        ("state['uinteger']", state["uinteger"], 1 << 32),
        ("state['seed']", state["seed"], None),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__}")
        if value < 0 or (bound is not None and value >= bound):
            raise ValueError(f"{where}: {name} is out of range: {value}"[:290])
    return state


def set_rng_state(state) -> None:
    """Restore the default generator (and its seed) from :func:`get_rng_state`'s dict."""
    check_rng_state(state)
    bit = np.random.PCG64()
    bit.state = {
        "bit_generator": _BIT_GENERATOR,
        "state": {"state": int(state["state"]["state"]), "inc": int(state["state"]["inc"])},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }
    _state["seed"] = int(state["seed"])
    _state["generator"] = np.random.Generator(bit)


def init_generator(seed, where: str) -> np.random.Generator:
    """The generator a layer draws its initial weights from.

    ``seed=None``: the default generator (the layer advances it, so the next
    layer gets other numbers); an int >= 0: a fresh ``np.random.default_rng(seed)``
    (the layer's weights depend on that seed only); a ``np.random.Generator`` is
    used as it is.
    """
    if seed is None:
        return _state["generator"]
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(check_seed(seed, where))


def epoch_generator(seed, epoch) -> np.random.Generator:
    """A generator that depends only on ``(seed, epoch)`` (``fit``'s per-epoch augmentation).

    Spawned from ``SeedSequence(seed)`` with ``epoch`` as its spawn key, so it is
    independent of the shuffle stream and of other epochs, and a resumed run
    gets the same one without replaying earlier epochs.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(int(epoch),))))


@contextlib.contextmanager
def fork_rng():
    """Run a block without changing the default generator (its state and seed are put back afterwards).

    ``fg.load`` and ``fg.load_checkpoint`` build layers (which draw initial
    weights) only to overwrite them: inside ``fork_rng`` loading leaves the
    random stream of a resumed run where it was.
    """
    saved = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)
