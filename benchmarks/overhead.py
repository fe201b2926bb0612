"""Per-call overhead: the time of a fastgrad Python call vs the time of its compiled kernels alone.

``python -m benchmarks.overhead`` times, at tiny shapes where the kernels do almost
nothing, every functional op (``fastgrad.functional.*`` forward and backward) and
layer (``forward(x)`` / ``backward(dy)``), and four whole training steps (the
digits MLP and CNN of ``fastgrad.cases``, the row-LSTM digits example and the
char-LM example).  For each row:

* ``call``: the Python call as a user makes it;
* ``kernels``: the same kernel launches replayed alone: each numba kernel the
  call launched, on the twin (serial/parallel) the library picked, called
  through its compiled overload's entry point with the exact arguments of the
  call (no validation, allocation, dispatch or typing);
* ``overhead`` = call - kernels: what fastgrad's Python layer costs per call;
* ``launches``: how many kernel launches the call makes.

``overhead`` is everything outside the compiled kernels: validation, NumPy
glue (reshapes, transposes, sums), numba's dispatch, Python itself, and the
allocation of fresh output arrays, including their first-touch page faults,
which the kernel takes inside the call but not in a replay (whose buffers are
reused): at the char-LM sizes this is most of the forward's overhead (~10 MB of
fresh LSTM outputs and saved gates per call).  ``launches`` counts the input
checks' kernels too (``util.all_finite``, from check_finite); the report shows
how many of the launches they are.

The JSON output also has ``dispatch_us``: the launches replayed through what
``fastgrad._jit.pick`` returned (a numba dispatcher, which types every argument
on each call), and the time of each launch.

How the launches are found.  Every call site chooses a kernel's twin with
``fastgrad._jit.pick(kernel, work)``.  :func:`record` runs the call once with
``pick`` patched to return a recorder, which notes the dispatcher and a copy of
the arguments (taken just before the launch, so each replay sees the inputs
the kernel saw) and runs the kernel.  Calls that remember the twin they picked
(``fastgrad.functional.common.remembered``) are forgotten before the recording,
so it goes through ``pick``, and again after it, so no memory keeps a
recorder.  (Recording in a second Python thread instead, as a first version
did, gave OpenMP a second team of spinning threads: every later figure of the
run was 2x too slow on 2 cores.)  A launch that bypasses ``pick`` (a remembered compiled entry point)
is detected with a profiler hook and reported as ``bypassed`` (it would make
``kernels`` too small); every row should show 0.

Timing: ``time.perf_counter`` around a loop of calls sized to a target time,
warm-up calls first, ``gc`` disabled while timing, every figure the median over
``--rounds`` rounds, rounds interleaved (round r times every row once before
round r+1 starts).  Replays run on private, 64-byte-aligned copies of the
arguments, restored before each measurement (backward kernels accumulate and
optimizer kernels update in place).

Examples::

    python -m benchmarks.overhead                       # float32 and float64, 3 rounds
    python -m benchmarks.overhead --quick --dtype float32
    python -m benchmarks.overhead --markdown            # a README-ready table
    python -m benchmarks.overhead --json overhead.json

API: :func:`machine_info`, :func:`record`, :func:`op_cases`, :func:`step_cases`,
:func:`run`, :func:`format_text`, :func:`format_markdown`, :func:`main`.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np

import fastgrad as fg
import fastgrad.functional as F
from fastgrad import _jit
from fastgrad import cases as fg_cases
from fastgrad.functional.common import forget_calls
from fastgrad.fused import DenseStack

_FUSED_FORWARD_LOSS = DenseStack.forward_loss


def _not_fused(stack, x, y, loss):
    return None  # as for targets the stack does not take: the model runs layer by layer


__all__ = [
    "Launch", "Recording", "OpCase", "StepCase", "BuiltStep", "PHASES", "is_check",
    "machine_info", "record", "op_cases", "step_cases", "run", "format_text", "format_markdown", "main",
]

DTYPES = ("float32", "float64")
#: the phases of a training step, timed as a user calls them (``clip`` only in the examples that clip)
PHASES = ("zero_grad", "forward", "loss", "backward", "clip", "step")

#: seconds each measurement (one loop of calls) aims at, default and --quick
TARGET_S = 0.01
QUICK_TARGET_S = 0.002
ALIGN = 64


# --------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------


def _cpu_model() -> str:
    return _jit.cpu_info()["model"]


def machine_info() -> dict:
    """CPU model, core count, numba threads and threading layer, versions, load average."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = "not started"
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": layer,
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "fastgrad": getattr(fg, "__version__", "?"),
        "load_1min": load,
    }


# --------------------------------------------------------------------------
# capture: record every kernel launch of one call
# --------------------------------------------------------------------------


@dataclass
class Launch:
    """One kernel launch of a recorded call, ready to replay.

    ``picked``: what ``_jit.pick`` returned (a dispatcher, or pick's locked /
    dynamic wrapper of one); ``entry``: the compiled overload's entry point for
    exactly these argument types (``picked`` itself when there is none, e.g.
    NUMBA_DISABLE_JIT=1); ``args``: the private copy replays use, restored from
    ``pristine`` by :meth:`reset`.
    """

    kernel: str
    twin: str
    picked: Callable
    entry: Callable
    args: tuple
    pristine: list = field(default_factory=list)  # [(working array, saved copy)]
    phase: str | None = None

    def reset(self) -> None:
        for work, saved in self.pristine:
            np.copyto(work, saved)


@dataclass
class Recording:
    launches: list
    bypassed: int  # compiled kernel entry points called without going through pick (not replayed)
    result: object = None


class _Sink:
    def __init__(self):
        self.launches = []
        self.phase = None


#: the sink of the recording in progress (None: recorders just run the kernel)
_SINK = None


class _Recorder:
    """What the patched pick returns: notes (kernel, twin, argument copies), then runs the twin.

    No ``overloads`` attribute, so callers that resolve a dispatcher to its entry
    point (``_jit.exact``) treat it as pick's other wrappers and call it as it is.
    A call that remembers it (in the recording thread only) records into whatever
    recording is in progress, and otherwise just runs the kernel.
    """

    __slots__ = ("kernel", "picked")

    def __init__(self, kernel, picked):
        self.kernel = kernel
        self.picked = picked

    def __call__(self, *args):
        sink = _SINK
        if sink is not None:
            sink.launches.append(_launch(self.kernel, self.picked, args, sink.phase))
        return self.picked(*args)


_RECORDER_CODE = _Recorder.__call__.__code__


def _dispatcher(picked):
    """The numba dispatcher inside what pick returned (pick's lock / chunk-size wrappers hold it as ``fn``)."""
    d = picked
    for _ in range(4):
        if hasattr(d, "overloads") and hasattr(d, "typeof_pyval"):
            return d
        d = getattr(d, "fn", None)
        if d is None:
            break
    return None


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    raw = np.empty(a.nbytes + ALIGN, np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    out = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _copy_args(args: tuple):
    """Deep copy of a launch's arguments (arrays, NamedTuples of arrays); arrays passed twice stay one array."""
    memo = {}
    pairs = []

    def cp(a):
        if isinstance(a, np.ndarray):
            hit = memo.get(id(a))
            if hit is None:
                work = _aligned_copy(a)
                saved = a.copy()
                hit = memo[id(a)] = work
                pairs.append((work, saved))
            return hit
        if isinstance(a, tuple):
            items = [cp(x) for x in a]
            return type(a)(*items) if hasattr(type(a), "_fields") else tuple(items)
        return a

    return tuple(cp(a) for a in args), pairs


def _launch(kernel, picked, args, phase) -> Launch:
    name = getattr(kernel, "name", None) or getattr(kernel, "__name__", repr(kernel))
    d = _dispatcher(picked)
    twin = "serial" if d is getattr(kernel, "serial", None) else "parallel" if d is getattr(kernel, "parallel", None) else "?"
    copied, pairs = _copy_args(args)
    entry = picked
    if d is not None:
        sig = tuple(d.typeof_pyval(a) for a in args)
        if tuple(d.typeof_pyval(a) for a in copied) != sig:  # a copy would be another type: replay the originals
            copied, pairs = args, []
        if sig not in d.overloads:
            d.compile(sig)
        entry = d.overloads[sig].entry_point
    else:
        copied, pairs = args, []
    return Launch(name, twin, picked, entry, copied, pairs, phase)


def _all_kernels() -> list:
    found = getattr(_jit, "KERNELS", None)
    if found:
        return list(found)
    import fastgrad.kernels as pkg

    out = []
    for name, mod in list(sys.modules.items()):
        if name.startswith(pkg.__name__ + "."):
            out += [v for v in vars(mod).values() if isinstance(v, _jit.Kernel)]
    return out


def _entry_points() -> set:
    ids = set()
    for k in _all_kernels():
        for twin in (getattr(k, "serial", None), getattr(k, "parallel", None)):
            for cres in getattr(twin, "overloads", {}).values():
                ids.add(id(cres.entry_point))
    return ids


def _run_recorded(fn, sink: _Sink, wants_mark: bool):
    called = []

    def profile(frame, event, arg):
        if event == "c_call" and frame.f_code is not _RECORDER_CODE:
            called.append(arg)

    def mark(phase):
        sink.phase = phase

    sys.setprofile(profile)
    try:
        result = fn(mark) if wants_mark else fn()
    finally:
        sys.setprofile(None)
    return result, called


def record(fn, mark: bool = False) -> Recording:
    """Run ``fn()`` once (``fn(mark)`` with ``mark=True``) and return every kernel launch it made.

    ``mark(phase)`` tags the launches that follow with ``phase``.  ``fn`` runs
    in the recording thread with ``fastgrad._jit.pick`` (and any fastgrad
    module's own ``pick`` name bound to it) patched; see the module docstring.
    """
    global _SINK
    real = _jit.pick
    patched_modules = [m for name, m in list(sys.modules.items())
                       if m is not None and name.startswith("fastgrad") and getattr(m, "pick", None) is real]

    def recording_pick(k, work):
        return _Recorder(k, real(k, work))

    sink = _Sink()
    for m in patched_modules:
        m.pick = recording_pick
    _SINK = sink
    try:
        # remembered calls (fastgrad.functional.common) keep the twin they picked: forgotten before,
        # so this run goes through pick, and after, so no memory keeps a recorder
        forget_calls()
        # a fused Dense stack (fastgrad.fused) makes the same launches from compiled code, where
        # pick cannot see them: the recording takes the layer-by-layer path, which makes them from Python
        DenseStack.forward_loss = _not_fused
        result, called = _run_recorded(fn, sink, mark)
    finally:
        DenseStack.forward_loss = _FUSED_FORWARD_LOSS
        forget_calls()
        _SINK = None
        for m in patched_modules:
            m.pick = real
    entries = _entry_points()
    bypassed = sum(1 for f in called if id(f) in entries)
    return Recording(sink.launches, bypassed, result)


# --------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------


def _loop(fn, args, n: int) -> float:
    """Seconds per call of fn(*args), n calls, gc off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            fn(*args)
        t1 = time.perf_counter()
    finally:
        if enabled:
            gc.enable()
    return (t1 - t0) / n


class _Timer:
    """One figure: fn(*args) timed in loops of ``n`` calls (n sized to the target), one sample per round."""

    def __init__(self, fn, args=(), reset=None):
        self.fn, self.args, self.reset = fn, args, reset
        self.n = 1
        self.samples = []

    def prepare(self, target: float, warmup: int) -> None:
        if self.reset:
            self.reset()
        for _ in range(warmup):
            self.fn(*self.args)
        single = min(_loop(self.fn, self.args, 1) for _ in range(3))
        self.n = max(1, min(100_000, int(target / max(single, 1e-8))))

    def sample(self) -> None:
        if self.reset:
            self.reset()
        self.samples.append(_loop(self.fn, self.args, self.n))

    @property
    def us(self) -> float:
        return statistics.median(self.samples) * 1e6


class _PhaseTimer:
    """A training step run as its phases, ``phased(mark)``; one sample per round of each phase's time."""

    def __init__(self, phased):
        self.phased = phased
        self.n = 1
        self.samples = []  # per round: {phase: seconds per step}

    def _run(self, n: int) -> dict:
        totals = {}
        stamps = []
        pc = time.perf_counter

        def mark(phase):
            stamps.append((phase, pc()))

        enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(n):
                stamps.clear()
                self.phased(mark)
                mark(None)
                for (phase, t0), (_, t1) in zip(stamps, stamps[1:]):
                    totals[phase] = totals.get(phase, 0.0) + (t1 - t0)
        finally:
            if enabled:
                gc.enable()
        return {p: t / n for p, t in totals.items()}

    def prepare(self, target: float, warmup: int) -> None:
        for _ in range(max(1, warmup)):
            self._run(1)
        single = sum(self._run(1).values())
        self.n = max(1, min(100_000, int(target / max(single, 1e-8))))

    def sample(self) -> None:
        self.samples.append(self._run(self.n))

    def us(self, phase: str) -> float:
        return statistics.median(s.get(phase, 0.0) for s in self.samples) * 1e6


class _Measured:
    """A recorded call: its call timer and, per launch, an entry-point timer and a dispatcher timer."""

    def __init__(self, call, recording: Recording):
        self.call = _Timer(call)
        self.recording = recording
        self.entry = [_Timer(la.entry, la.args, la.reset) for la in recording.launches]
        self.dispatch = [_Timer(la.picked, la.args, la.reset) for la in recording.launches]

    def timers(self) -> list:
        return [self.call, *self.entry, *self.dispatch]

    def launches_json(self, phase=...) -> list:
        return [
            {"kernel": la.kernel, "twin": la.twin, "phase": la.phase, "us": round(e.us, 3), "dispatch_us": round(d.us, 3)}
            for la, e, d in zip(self.recording.launches, self.entry, self.dispatch)
            if phase is ... or la.phase == phase
        ]

    def sums(self, phase=...) -> dict:
        """kernels_us, dispatch_us, launches, check_launches, checks_us over all launches or those of one phase."""
        rows = [(e.us, d.us, is_check(la.kernel)) for la, e, d in zip(self.recording.launches, self.entry, self.dispatch)
                if phase is ... or la.phase == phase]
        return {
            "kernels_us": round(sum(r[0] for r in rows), 3),
            "dispatch_us": round(sum(r[1] for r in rows), 3),
            "launches": len(rows),
            "check_launches": sum(1 for r in rows if r[2]),
            "checks_us": round(sum(r[0] for r in rows if r[2]), 3),
        }


def is_check(kernel_name: str) -> bool:
    """True for the input checks' kernels (``util.all_finite``: check_finite), not an op's own computation."""
    return kernel_name.startswith("util.")


# --------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class OpCase:
    """One functional op or layer method at a tiny shape: ``build(dtype)`` returns the zero-argument call."""

    name: str
    kind: str  # "functional" or "layer"
    shape: str
    build: Callable


@dataclass(frozen=True)
class StepCase:
    """One training step: ``build(dtype)`` returns a :class:`BuiltStep`."""

    name: str
    build: Callable


@dataclass
class BuiltStep:
    """``step()``: one training step; ``phased(mark)``: the same step with ``mark(phase)`` before each phase."""

    step: Callable
    phased: Callable
    model: object
    config: str


def _rng():
    return np.random.default_rng(0)


def _arr(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _functional_cases() -> list:
    def dense(dt, backward):
        r = _rng()
        x, W, b = _arr(r, (1, 4), dt), _arr(r, (4, 4), dt), _arr(r, (4,), dt)
        if not backward:
            return lambda: F.dense_forward(x, W, b)
        y, cache = F.dense_forward(x, W, b)
        dy = _arr(r, y.shape, dt)
        return lambda: F.dense_backward(dy, cache)

    def conv(dt, backward):
        r = _rng()
        x, K, B = _arr(r, (1, 1, 4, 4), dt), _arr(r, (2, 1, 3, 3), dt), _arr(r, (2,), dt)
        if not backward:
            return lambda: F.conv_forward(x, K, B)
        y, cache = F.conv_forward(x, K, B)
        dy = _arr(r, y.shape, dt)
        return lambda: F.conv_backward(dy, cache)

    def lstm(dt, backward, T):
        r = _rng()
        x, W, b = _arr(r, (T, 1, 4), dt), _arr(r, (4, 4, 8), dt, 0.3), _arr(r, (4, 4), dt, 0.3)
        if not backward:
            return lambda: F.lstm_forward(x, W, b)
        (y, _), cache = F.lstm_forward(x, W, b)
        dy = _arr(r, y.shape, dt)
        return lambda: F.lstm_backward(dy, cache)

    def softmax(dt, backward):
        r = _rng()
        x = _arr(r, (1, 4), dt)
        if not backward:
            return lambda: F.softmax(x)
        y = F.softmax(x)
        dy = _arr(r, y.shape, dt)
        return lambda: F.softmax_backward(dy, y)

    def maxpool(dt, backward):
        r = _rng()
        x = _arr(r, (1, 1, 4, 4), dt)
        if not backward:
            return lambda: F.max_pool_forward(x, 2)
        y, cache = F.max_pool_forward(x, 2)
        dy = _arr(r, y.shape, dt)
        return lambda: F.max_pool_backward(dy, cache)

    def cross_entropy(dt):
        r = _rng()
        logits, labels = _arr(r, (1, 4), dt), np.array([2])
        return lambda: F.cross_entropy(logits, labels)

    out = []
    for name, shape, fn in (("dense", "N=1 n=4 m=4", dense), ("conv", "N=1 C=1 H=W=4 M=2 k=3", conv)):
        out += [OpCase(f"F.{name}_forward", "functional", shape, lambda dt, fn=fn: fn(dt, False)),
                OpCase(f"F.{name}_backward", "functional", shape, lambda dt, fn=fn: fn(dt, True))]
    for T in (1, 2):
        shape = f"T={T} N=1 I=4 H=4"
        out += [OpCase(f"F.lstm_forward T={T}", "functional", shape, lambda dt, T=T: lstm(dt, False, T)),
                OpCase(f"F.lstm_backward T={T}", "functional", shape, lambda dt, T=T: lstm(dt, True, T))]
    out += [
        OpCase("F.softmax", "functional", "(1, 4)", lambda dt: softmax(dt, False)),
        OpCase("F.softmax_backward", "functional", "(1, 4)", lambda dt: softmax(dt, True)),
        OpCase("F.max_pool_forward", "functional", "(1, 1, 4, 4) k=2", lambda dt: maxpool(dt, False)),
        OpCase("F.max_pool_backward", "functional", "(1, 1, 4, 4) k=2", lambda dt: maxpool(dt, True)),
        OpCase("F.cross_entropy", "functional", "(1, 4) labels", cross_entropy),
    ]
    return out


def _layer_pair(make_layer, x_shape, scale=1.0):
    """(forward case builder, backward case builder) for a layer on a standard-normal x of x_shape."""

    def build(dt, backward):
        r = _rng()
        layer = make_layer(np.dtype(dt))
        x = _arr(r, x_shape, dt, scale)
        if not backward:
            return lambda: layer.forward(x)
        y = layer.forward(x)
        dy = _arr(r, y.shape, dt)
        return lambda: layer.backward(dy)

    return (lambda dt: build(dt, False)), (lambda dt: build(dt, True))


def _layer_cases() -> list:
    specs = [
        ("Dense", "N=1 n=4 m=4", lambda dt: fg.Dense(4, 4, dtype=dt, seed=0), (1, 4)),
        ("Dense[relu]", "N=1 n=4 m=4", lambda dt: fg.Dense(4, 4, "relu", dtype=dt, seed=0), (1, 4)),
        ("Conv2D", "N=1 C=1 H=W=4 M=2 k=3", lambda dt: fg.Conv2D(1, 2, 3, dtype=dt, seed=0), (1, 1, 4, 4)),
        ("LSTM T=1", "T=1 N=1 I=4 H=4", lambda dt: fg.LSTM(4, 4, dtype=dt, seed=0), (1, 1, 4)),
        ("LSTM T=2", "T=2 N=1 I=4 H=4", lambda dt: fg.LSTM(4, 4, dtype=dt, seed=0), (2, 1, 4)),
        ("MaxPool2D", "(1, 1, 4, 4) k=2", lambda dt: fg.MaxPool2D(2), (1, 1, 4, 4)),
        ("Softmax", "(1, 4)", lambda dt: fg.Softmax(), (1, 4)),
    ]
    out = []
    for name, shape, make, x_shape in specs:
        fwd, bwd = _layer_pair(make, x_shape)
        base, _, suffix = name.partition(" ")
        suffix = f" {suffix}" if suffix else ""
        out += [OpCase(f"{base}.forward{suffix}", "layer", shape, fwd), OpCase(f"{base}.backward{suffix}", "layer", shape, bwd)]

    def loss(dt):
        r = _rng()
        logits, labels = _arr(r, (1, 4), dt), np.array([2])
        ce = fg.CrossEntropyLoss()

        def call():
            ce(logits, labels)
            return ce.backward()

        return call

    out.append(OpCase("CrossEntropyLoss()+backward()", "layer", "(1, 4) labels", loss))
    return out


def op_cases() -> list:
    """Every op/layer row, functional first (see OpCase)."""
    return _functional_cases() + _layer_cases()


def _train_step_case(model, x, y, loss, opt, clip_norm=None):
    """step() = model.train_step(...); phased(mark) = the same step as a user writes it, phase by phase."""

    def step():
        return model.train_step(x, y, loss, opt, clip_norm=clip_norm)

    def phased(mark):
        mark("zero_grad")
        model.zero_grad()
        mark("forward")
        out = model.forward(x)
        mark("loss")
        value = loss(out, y)
        mark("backward")
        model.backward(loss.backward())
        if clip_norm is not None:
            mark("clip")
            fg.clip_grad_norm(opt, clip_norm)
        mark("step")
        opt.step()
        return value

    return step, phased


def _defaults(func) -> dict:
    return {k: p.default for k, p in inspect.signature(func).parameters.items() if p.default is not inspect.Parameter.empty}


def _mlp_step(dt):
    batch = 32
    model = fg.Sequential(*[fg.Dense(n_in, n_out, act, dtype=dt, seed=0) for n_in, n_out, act in fg_cases.MLP_LAYERS])
    r = _rng()
    x = _arr(r, (batch, fg_cases.MLP_LAYERS[0][0]), dt)
    y = r.integers(0, fg_cases.MLP_LAYERS[-1][1], batch)
    step, phased = _train_step_case(model, x, y, fg.CrossEntropyLoss(), fg.SGD(model, fg_cases.TRAIN_LR))
    sizes = " -> ".join(str(n) for n in [fg_cases.MLP_LAYERS[0][0]] + [layer[1] for layer in fg_cases.MLP_LAYERS])
    return BuiltStep(step, phased, model, f"Dense {sizes}, batch {batch}, SGD lr {fg_cases.TRAIN_LR}, train_step")


def _cnn_step(dt):
    batch = 32
    layers = []
    for c_in, c_out, k, pad in fg_cases.CNN_BLOCKS:  # as benchmarks/peer_fastgrad.py _cnn
        layers += [fg.Conv2D(c_in, c_out, k, padding=pad, activation="relu", dtype=dt, seed=0), fg.MaxPool2D(2)]
    layers += [fg.Flatten(), fg.Dense(*fg_cases.CNN_DENSE, dtype=dt, seed=0)]
    model = fg.Sequential(*layers)
    r = _rng()
    x = _arr(r, (batch,) + tuple(fg_cases.CNN_IMAGE), dt)
    y = r.integers(0, fg_cases.CNN_DENSE[1], batch)
    step, phased = _train_step_case(model, x, y, fg.CrossEntropyLoss(), fg.SGD(model, fg_cases.TRAIN_LR))
    blocks = ", ".join(f"Conv2D({a},{b},{k},pad {p})+MaxPool2D(2)" for a, b, k, p in fg_cases.CNN_BLOCKS)
    return BuiltStep(step, phased, model, f"{blocks}, Dense{tuple(fg_cases.CNN_DENSE)}, batch {batch}, SGD, train_step")


def _lstm_digits_step(dt):
    from fastgrad.examples import lstm_digits

    d = _defaults(lstm_digits.train)  # the example's own sizes: batch_size, hidden, lr
    batch, hidden = d["batch_size"], d["hidden"]
    model = lstm_digits.build(hidden=hidden, seed=0, dtype=dt)
    r = _rng()
    x = (r.random((batch, 8, 8)) - 0.5).astype(dt)  # 8x8 images read row by row, centred as the example does
    y = r.integers(0, 10, batch)
    step, phased = _train_step_case(model, x, y, fg.CrossEntropyLoss(), fg.Adam(model, d["lr"]), clip_norm=5.0)
    desc = f"LSTM(8,{hidden}) over T=8 rows -> last h -> Dense({hidden},10), batch {batch}, Adam lr {d['lr']}, clip 5, train_step"
    return BuiltStep(step, phased, model, desc)


_VOCAB = None


def _charlm_step(dt):
    global _VOCAB
    from fastgrad.examples import charlm

    d = _defaults(charlm.train)  # the example's own sizes
    if _VOCAB is None:
        _VOCAB = len(set(charlm.corpus()))
    V, T, N = _VOCAB, d["seq_len"], d["batch_size"]
    model = charlm.build(V, d["embed"], d["hidden"], d["dropout"], 0, dt)
    opt = fg.Adam(model, d["lr"])
    r = _rng()
    window = r.integers(0, V, (T + 1, N))  # one fixed batch (the example draws a new window each step)
    inputs, target = window[:-1], window[1:].reshape(-1)

    def phased(mark):  # the loop body of charlm.train
        mark("zero_grad")
        opt.zero_grad()
        mark("forward")
        logits = model.forward(inputs)
        mark("loss")
        value, dlogits = F.cross_entropy(logits.reshape(-1, V), target)
        mark("backward")
        model.backward(dlogits.reshape(logits.shape))
        mark("clip")
        fg.clip_grad_norm(model, 5.0)
        mark("step")
        opt.step()
        return value

    def step():
        return phased(lambda phase: None)

    desc = (f"Embedding({V},{d['embed']}) Dropout LSTM({d['embed']},{d['hidden']}) Dropout Dense({d['hidden']},{V}), "
            f"T={T} N={N}, Adam lr {d['lr']}, clip 5, charlm.train's loop body")
    return BuiltStep(step, phased, model, desc)


def step_cases() -> list:
    """The training-step rows (see StepCase)."""
    return [StepCase("MLP step", _mlp_step), StepCase("CNN step", _cnn_step),
            StepCase("LSTM-digits step", _lstm_digits_step), StepCase("char-LM step", _charlm_step)]


# --------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------


def _select(cases, names):
    if names is None:
        return list(cases)
    wanted = list(names)
    chosen = [c for c in cases if c.name in wanted]
    unknown = set(wanted) - {c.name for c in chosen}
    if unknown:
        raise ValueError(f"unknown case(s) {sorted(unknown)}; known: {[c.name for c in cases]}")
    return chosen


def _warn_bypassed(name, rec):
    if rec.bypassed:
        print(f"warning: {name}: {rec.bypassed} kernel launch(es) bypassed fastgrad._jit.pick and are not in 'kernels'",
              file=sys.stderr)


def run(rounds=3, dtypes=DTYPES, quick=False, ops=None, steps=None, target_s=None, warmup=None, progress=False) -> dict:
    """Time the rows; returns {"machine", "settings", "ops": [...], "steps": [...]} (all times in microseconds).

    ``ops`` / ``steps``: names of the rows to run (None: all; [] none).
    ``target_s``: seconds per measurement loop (default 0.01, --quick 0.002).
    """
    rounds = int(rounds)
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    target = target_s if target_s is not None else (QUICK_TARGET_S if quick else TARGET_S)
    warmup = warmup if warmup is not None else (1 if quick else 3)
    op_list = _select(op_cases(), ops)
    step_list = _select(step_cases(), steps)
    rows, step_rows = [], []
    timers = []
    for dt in dtypes:
        dt = np.dtype(dt).name
        for case in op_list:
            call = case.build(dt)
            call()  # compile / remember before recording
            rec = record(call)
            _warn_bypassed(case.name, rec)
            m = _Measured(call, rec)
            rows.append((dt, case, m))
            timers += m.timers()
        for case in step_list:
            built = case.build(dt)
            step, phased, n_layers, desc = built.step, built.phased, len(built.model.layers), built.config
            step()
            phased(lambda phase: None)
            rec = record(step)
            rec_phases = record(phased, mark=True)
            _warn_bypassed(case.name, rec)
            _warn_bypassed(case.name + " (phases)", rec_phases)
            m, mp, pt = _Measured(step, rec), _Measured(None, rec_phases), _PhaseTimer(phased)
            step_rows.append((dt, case, desc, n_layers, m, mp, pt))
            timers += m.timers() + mp.entry + mp.dispatch + [pt]
    if progress:
        print(f"  recorded {len(rows)} op rows and {len(step_rows)} steps; warming up {len(timers)} measurements",
              file=sys.stderr, flush=True)
    for t in timers:
        t.prepare(target, warmup)
    gc.collect()
    for r in range(rounds):
        if progress:
            print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        for t in timers:
            t.sample()

    def figures(call_us, sums):
        return {"call_us": round(call_us, 3), **sums, "overhead_us": round(call_us - sums["kernels_us"], 3)}

    out_ops = []
    for dt, case, m in rows:
        out_ops.append({
            "dtype": dt, "name": case.name, "kind": case.kind, "shape": case.shape, **figures(m.call.us, m.sums()),
            "bypassed": m.recording.bypassed, "kernels": m.launches_json(),
        })
    out_steps = []
    for dt, case, desc, n_layers, m, mp, pt in step_rows:
        phases = [{"phase": phase, **figures(pt.us(phase), mp.sums(phase))}
                  for phase in PHASES if any(phase in s for s in pt.samples)]
        out_steps.append({
            "dtype": dt, "name": case.name, "config": desc, "layers": n_layers, **figures(m.call.us, m.sums()),
            "bypassed": m.recording.bypassed + mp.recording.bypassed, "kernels": m.launches_json(), "phases": phases,
        })
    settings = {"rounds": rounds, "dtypes": [np.dtype(d).name for d in dtypes], "quick": bool(quick),
                "target_s": target, "warmup": warmup, "statistic": "median over rounds"}
    return {"machine": machine_info(), "settings": settings, "ops": out_ops, "steps": out_steps}


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------


def _header(results) -> list:
    m, s = results["machine"], results["settings"]
    load = "?" if m["load_1min"] is None else round(m["load_1min"], 2)
    return [
        f"CPU: {m['cpu']} ({m['cores']} cores), numba threads: {m['numba_threads']} ({m['threading_layer']} layer)",
        f"python {m['python']}, numba {m['numba']}, numpy {m['numpy']}, fastgrad {m['fastgrad']}, "
        f"1-min load {load}; each figure the median of {s['rounds']} interleaved rounds{' (--quick)' if s['quick'] else ''}",
    ]


def _f(v) -> str:
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"


def _launches(r) -> str:
    """``n`` or ``n (c checks)``: c of the n launches are input checks (util.all_finite)."""
    c = r["check_launches"]
    return f"{r['launches']} ({c} check{'s' if c > 1 else ''})" if c else str(r["launches"])


_NOTE = ("kernels = the call's kernel launches replayed alone (compiled entry points, same twin and arguments); "
         "overhead = call - kernels; launches (c checks): c of them are check_finite's util.all_finite")


def format_text(results) -> str:
    """The full plain-text report: every row with the kernels it launched, every step with its phases."""
    lines = _header(results)
    cols = f"{'call':>9s} {'kernels':>9s} {'overhead':>9s} {'dispatch':>9s}  {'launches':16s}"
    for dt in results["settings"]["dtypes"]:
        ops = [r for r in results["ops"] if r["dtype"] == dt]
        if ops:
            lines += ["", f"{dt}: one call, microseconds",
                      f"  {'row':30s} {'shape':22s} {cols} kernels ([s]erial/[p]arallel twin)"]
            for r in ops:
                names = ", ".join(f"{k['kernel']}[{k['twin'][0]}]" for k in r["kernels"])
                lines.append(f"  {r['name']:30s} {r['shape']:22s} {_f(r['call_us']):>9s} {_f(r['kernels_us']):>9s} "
                             f"{_f(r['overhead_us']):>9s} {_f(r['dispatch_us']):>9s}  {_launches(r):16s} {names}")
        for r in (r for r in results["steps"] if r["dtype"] == dt):
            lines += ["", f"{dt}: {r['name']}: {r['config']}", f"  {'':30s} {cols}"]
            rows = [("step (one call)", r)] + [(f"  {p['phase']}", p) for p in r["phases"]]
            for label, x in rows:
                lines.append(f"  {label:30s} {_f(x['call_us']):>9s} {_f(x['kernels_us']):>9s} {_f(x['overhead_us']):>9s} "
                             f"{_f(x['dispatch_us']):>9s}  {_launches(x):16s}")
    bypassed = [r["name"] for r in results["ops"] + results["steps"] if r["bypassed"]]
    if bypassed:
        lines += ["", f"WARNING: kernel launches bypassed fastgrad._jit.pick (kernels incomplete) in: {', '.join(bypassed)}"]
    lines += ["", _NOTE + "; dispatch = the same launches through numba's dispatcher (with its argument typing);",
              "phases: the step as a user calls it (zero_grad, forward, loss, backward = model.backward, [clip], optimizer step)."]
    return "\n".join(lines)


def format_markdown(results) -> str:
    """A compact README table per dtype: op / layer / step, call us, kernels us, overhead us, launches."""
    lines = [" ".join(_header(results)) + ".", "", _NOTE + ".", ""]
    for dt in results["settings"]["dtypes"]:
        rows = [r for r in results["ops"] if r["dtype"] == dt] + [r for r in results["steps"] if r["dtype"] == dt]
        if not rows:
            continue
        lines += [f"**{dt}**", "", "| op / layer / step | call µs | kernels µs | overhead µs | launches |", "|---|---:|---:|---:|---:|"]
        for r in rows:
            label = f"{r['name']}" if "config" in r else f"`{r['name']}` {r['shape']}"
            lines.append(f"| {label} | {_f(r['call_us'])} | {_f(r['kernels_us'])} | {_f(r['overhead_us'])} | {_launches(r)} |")
        lines.append("")
    configs = {r["name"]: r["config"] for r in results["steps"]}
    lines += [f"* {name}: {config}" for name, config in configs.items()]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each figure is the median (default 3)")
    p.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    p.add_argument("--quick", action="store_true", help=f"short loops ({QUICK_TARGET_S * 1e3:g} ms per measurement), one warm-up call")
    p.add_argument("--json", metavar="PATH", help="also write every figure (per launch, per phase) as JSON")
    p.add_argument("--markdown", action="store_true", help="print a README-ready table instead of the text report")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    dtypes = DTYPES if args.dtype == "both" else (args.dtype,)
    m = machine_info()
    # with --markdown stdout is only the table (its first line repeats this)
    print(f"CPU: {m['cpu']} ({m['cores']} cores), numba threads: {m['numba_threads']}", flush=True,
          file=sys.stderr if args.markdown else sys.stdout)
    results = run(rounds=args.rounds, dtypes=dtypes, quick=args.quick, progress=True)
    print(format_markdown(results) if args.markdown else format_text(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
