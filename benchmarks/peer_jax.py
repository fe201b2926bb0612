"""The JAX CPU peer (optional): ``jax.jit`` of the forward, and of forward + ``jax.vjp``.

JAX is never a dependency of fastgrad.  Install it for the benchmark with
``pip install jax==0.10.2`` (the CPU jaxlib); without it the jax columns say "n/a".

What is timed:

* forward: one jitted function of the inputs (parameters are arguments, not constants).
* fwd+bwd: one jitted function that runs ``jax.vjp`` and returns the forward
  output *and* the cotangents of ``dy`` (``(y, dx, dW, db)``), so XLA cannot
  drop the forward of a linear op whose VJP does not need it; the correctness
  guard sees only the gradients, in the NumPy peer's layout.
* train_*: one jitted function: forward, mean cross-entropy over the batch
  (integer labels), ``jax.value_and_grad``, plain SGD with ``TRAIN_LR``; it
  returns ``(loss, new params)`` and the parameters are donated to it (updated
  in place by XLA), kept as the bench's state across calls as the other peers do
  (so the parameters one call returns are deleted by the next call: convert first).

Every call ends with ``jax.block_until_ready`` (JAX dispatches asynchronously),
and returns the JAX arrays: the copy to NumPy happens in :func:`to_numpy`, which
only the correctness guard calls, never the timed loop.  The compile happens in
the worker's warmup calls (and in the guard's own fresh bench), never in a timed
call.  The peer protocol is described in :mod:`benchmarks.peer_numpy`.

Threads.  XLA's CPU client has no runtime setter; what it reads, when the CPU
backend starts (at the first computation, not at ``import jax``):

* ``PJRT_NPROC`` (falling back to ``NPROC``, then the core count): the size of the
  client's intra-op pool, where XLA runs its multi-threaded matmuls, convolutions
  and parallel loops (checked on jaxlib 0.10.2: the process has exactly that many
  ``tf_XLAEigen`` threads; with 1, the work stays on one thread).  :func:`configure`
  sets it to the worker's thread count, and the runner sets it in every
  worker's environment with the other thread-count variables.
* ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``: Eigen's matmul and
  convolution run single-threaded.  :func:`configure` adds it when threads == 1.

Not controlled: XLA's compiler threads and the client's few bookkeeping and
async-dispatch threads (these do little while a computation runs).  Whether a
given op actually splits over the pool is XLA's decision.  The
``intra_op_parallelism_threads=N`` of old recipes is a TensorFlow setting, not an
XLA flag: jaxlib 0.10.2 aborts on ``--intra_op_parallelism_threads=N`` (unknown flag)
and silently ignores the bare token after another flag, so it is not used.
Because all of it is read once, :func:`configure` must run before the first JAX
computation in the process (the worker calls it first); jax itself is
imported only then (:func:`_load`), with ``jax_enable_x64`` on for the float64 cases.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

import numpy as np

from .cases import CNN_BLOCKS, MLP_LAYERS, TRAIN_LR, NotAvailable

NAME = "jax"

_MISSING = "jax is not installed (pip install jax==0.10.2)"

#: the jax modules, imported by _load (after configure has set the thread environment)
jax = jnp = lax = None


def available() -> bool:
    try:
        return importlib.util.find_spec("jax") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as missing
        return False


def version() -> str:
    if not available():
        return "not installed"
    from importlib import metadata

    try:
        return metadata.version("jax")
    except metadata.PackageNotFoundError:  # pragma: no cover - jax importable but without metadata
        return "unknown"


def _load():
    """Import jax (once), float64 enabled; NotAvailable without it."""
    global jax, jnp, lax
    if jax is None:
        if not available():
            raise NotAvailable(_MISSING)
        import jax as _jax
        import jax.numpy as _jnp
        from jax import lax as _lax

        _jax.config.update("jax_enable_x64", True)
        jax, jnp, lax = _jax, _jnp, _lax
    return jax


def configure(threads: int) -> None:
    """Size XLA's CPU intra-op pool to ``threads`` (see the module docstring), then import jax."""
    if not available():
        raise NotAvailable(_MISSING)
    if "jax" in sys.modules:
        warnings.warn("jax was imported before peer_jax.configure: XLA's CPU thread pool may already be sized", stacklevel=2)
    os.environ["PJRT_NPROC"] = str(threads)
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    _load()


def to_numpy(result) -> list:
    return [np.array(r, copy=True) for r in result]


def _put(arr):
    return jax.device_put(np.array(arr, copy=True))


def _done(outputs) -> list:
    return list(jax.block_until_ready(outputs))


class _Op:
    """forward = jit(f)(*args); fwdbwd = jit(vjp of f w.r.t. args, applied to dy), returning (y, *grads)."""

    def __init__(self, f, args, dy):
        self.args = tuple(_put(a) for a in args)
        self.dy = _put(dy)

        def fwdbwd(args, dy):
            y, vjp = jax.vjp(f, *args)
            return (y, *vjp(dy))

        self._fwd = jax.jit(f)
        self._fwdbwd = jax.jit(fwdbwd)

    def forward(self):
        return _done([self._fwd(*self.args)])

    def fwdbwd(self):
        return _done(self._fwdbwd(self.args, self.dy))[1:]  # y is computed and waited for, not compared


def _dense(x, W, b):
    return x @ W.T + b


def _conv(x, K, B, pad=0):
    y = lax.conv_general_dilated(x, K, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + B[None, :, None, None]


def _lstm(x, W, b):
    """h0 = c0 = 0; z = W [h, x] + b with gates (f, i, o, n); the input half of W applied to all steps at once."""
    hidden = W.shape[1]
    w_h = W[:, :, :hidden].reshape(4 * hidden, hidden)
    w_x = W[:, :, hidden:].reshape(4 * hidden, -1)
    zx = x @ w_x.T + b.reshape(-1)  # (T, N, 4H)

    def step(carry, zx_t):
        h, c = carry
        z = (zx_t + h @ w_h.T).reshape(h.shape[0], 4, hidden)
        f, i, o = jax.nn.sigmoid(z[:, 0]), jax.nn.sigmoid(z[:, 1]), jax.nn.sigmoid(z[:, 2])
        c = f * c + i * jnp.tanh(z[:, 3])
        h = o * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((x.shape[1], hidden), x.dtype)
    _, ys = lax.scan(step, (zeros, zeros), zx)
    return ys


def _softmax(x):
    return jax.nn.softmax(x, axis=-1)


class _Train:
    """forward = jit(model)(params, x); fwdbwd = jit(loss + grad + SGD), params donated, returning [loss, *params]."""

    def __init__(self, model, inp):
        self.model = model
        self.params = [_put(p) for p in inp["params"]]
        self.x = _put(inp["x"])
        self.labels = _put(inp["labels"])

        def loss(params, x, labels):
            logp = jax.nn.log_softmax(model(params, x), axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

        def step(params, x, labels):
            value, grads = jax.value_and_grad(loss)(params, x, labels)
            return value, [p - TRAIN_LR * g for p, g in zip(params, grads)]

        self._fwd = jax.jit(model)
        self._step = jax.jit(step, donate_argnums=0)

    def forward(self):
        return _done([self._fwd(self.params, self.x)])

    def fwdbwd(self):
        value, self.params = jax.block_until_ready(self._step(self.params, self.x, self.labels))
        return [value, *self.params]


def _mlp(params, x):
    h = x
    for li, (_, _, act) in enumerate(MLP_LAYERS):
        h = _dense(h, params[2 * li], params[2 * li + 1])
        if act == "relu":
            h = jax.nn.relu(h)
    return h


def _cnn(params, x):
    """CNN_BLOCKS of conv (padding pad) + relu + 2x2 max pool, flatten (C, H, W), dense: as peer_torch's."""
    h = x
    for bi, (_, _, _, pad) in enumerate(CNN_BLOCKS):
        h = jax.nn.relu(_conv(h, params[2 * bi], params[2 * bi + 1], pad))
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    return _dense(h.reshape(h.shape[0], -1), params[-2], params[-1])


def build(case, dtype, inputs):
    _load()
    if case.op == "dense":
        return _Op(_dense, (inputs["x"], inputs["W"], inputs["b"]), inputs["dy"])
    if case.op == "conv2d":
        return _Op(_conv, (inputs["x"], inputs["K"], inputs["B"]), inputs["dy"])
    if case.op == "lstm":
        return _Op(_lstm, (inputs["x"], inputs["W"], inputs["b"]), inputs["dy"])
    if case.op == "softmax":
        return _Op(_softmax, (inputs["x"],), inputs["dy"])
    if case.op == "train_mlp":
        return _Train(_mlp, inputs)
    if case.op == "train_cnn":
        return _Train(_cnn, inputs)
    raise ValueError(f"unknown op {case.op!r}")
