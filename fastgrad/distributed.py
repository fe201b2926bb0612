"""Data-parallel training over MPI (mpi4py): one process per rank, same model on every rank.

Each rank holds a full copy of the model.  Rank 0's initial parameters are
broadcast to all ranks; every global batch of ``batch_size`` samples is split
into ``world`` contiguous shards; each rank runs forward/backward on its shard
and ONE ``Allreduce`` per step sums a single fused, preallocated buffer that
holds every gradient (pre-scaled by ``local_count / global_count``) plus a few
bookkeeping slots (sample count, loss sum, correct predictions, one failure flag
per rank).  After the Allreduce every rank holds the gradient of the mean loss
over the whole global batch, and runs the same optimizer step, so the
parameters stay identical on every rank.

Why the scaling is exact: with a mean-reduced loss rank r computes
``g_r = (1/n_r) sum_{i in shard r} dl_i``.  The global-batch gradient is
``(1/N) sum_i dl_i = sum_r (n_r/N) g_r``, which is what the Allreduce sums.
With equal shards ``n_r/N = 1/world`` (the usual "average over ranks"); with an
unequal last batch (N not divisible by world, or fewer samples than ranks, when
some ranks get 0 samples and contribute zeros) the count weighting keeps it
exact.  For world = 2 and equal shards the factor is 0.5, a power of two, so the
result equals the single-process gradient up to the order of summation.

``mpi4py`` is imported lazily: ``import fastgrad`` never needs it.  Without
mpi4py and outside ``mpiexec`` :func:`init` falls back to a one-process
:class:`SerialComm`, so the same training script runs with plain ``python``.

Failures: inside :func:`fit` (and inside ``DistributedOptimizer.guard()``) an
exception on one rank is caught, the rank still joins the step's Allreduce with
its failure flag set, and every rank raises ``RuntimeError("rank k failed:
...")``.  Uncaught exceptions elsewhere call ``MPI_Abort`` through the
``sys.excepthook`` that :func:`init` installs, which makes ``mpiexec`` kill all
ranks instead of leaving them blocked in a collective.  A hard crash
(segfault, ``os._exit``, OOM kill) is handled by the launcher: MPICH's and Open
MPI's ``mpiexec`` and Slurm's ``srun`` terminate the remaining ranks when one
rank dies.  Rank divergence that MPI cannot see (different code paths) still
hangs, so run jobs under a wall-clock limit.

Usage (``mpiexec -n 2 python train.py``)::

    import fastgrad as fg
    from fastgrad import distributed as dist

    dist.init()
    model = fg.Sequential(fg.Dense(64, 128, "relu"), fg.Dense(128, 10))
    opt = dist.DistributedOptimizer(fg.Adam(model, 1e-3))
    history = dist.fit(model, x, y, fg.CrossEntropyLoss(), opt, epochs=10, batch_size=64)
    dist.save(model, "model.npz")          # rank 0 writes, everyone waits
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np

from .losses import CrossEntropyLoss
from .optim import named_parameters
from .training import as_input, batch_shards, epoch_order, input_dtype, shard_bounds, train

__all__ = [
    "init",
    "get_comm",
    "rank",
    "world_size",
    "is_root",
    "barrier",
    "SerialComm",
    "broadcast_parameters",
    "epoch_order",
    "batch_shards",
    "shard_indices",
    "shard_bounds",
    "GradientAllreducer",
    "StepStats",
    "DistributedOptimizer",
    "MPIReplicas",
    "run_on_root",
    "fit",
    "evaluate",
    "save",
]

#: environment variables set by MPI launchers (MPICH/hydra, Open MPI, PMIx, Slurm's srun with PMI)
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")

_state = {"comm": None, "hook": None}


class SerialComm:
    """A one-process stand-in for an mpi4py communicator (rank 0 of 1).

    Implements the few calls this module uses, so training code runs unchanged
    without MPI.
    """

    rank = 0
    size = 1

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def Allreduce(self, sendbuf, recvbuf, op=None):
        if isinstance(sendbuf, np.ndarray) and sendbuf is not recvbuf:
            np.copyto(recvbuf, sendbuf)

    def Bcast(self, buf, root=0):
        pass

    def Barrier(self):
        pass

    def bcast(self, obj, root=0):
        return obj

    def allgather(self, obj):
        return [obj]

    def Abort(self, errorcode=1):
        os._exit(errorcode)


def _launched_by_mpi() -> bool:
    for var in _LAUNCHER_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            return True
    return False


def init(comm=None, abort_on_exception=True):
    """Set up from the MPI environment; returns the communicator (idempotent).

    ``comm``: an mpi4py communicator (default ``MPI.COMM_WORLD``) or
    :class:`SerialComm`.  Without mpi4py, a plain ``python`` run gets a
    SerialComm; under a launcher (PMI_SIZE / OMPI_COMM_WORLD_SIZE > 1) a missing
    mpi4py raises ImportError instead of silently training N separate models.
    ``abort_on_exception``: with more than one rank, install a ``sys.excepthook``
    that prints the traceback with the rank and calls ``comm.Abort(1)``, so an
    uncaught exception on one rank ends the whole job instead of a hang.
    """
    if comm is None:
        if _state["comm"] is not None:
            return _state["comm"]
        try:
            from mpi4py import MPI
        except ImportError as exc:
            if _launched_by_mpi():
                raise ImportError(
                    "fastgrad.distributed: this process was started by an MPI launcher but mpi4py is not installed; "
                    "pip install mpi4py mpich (or mpi4py built against your cluster's MPI)"
                ) from exc
            comm = SerialComm()
        else:
            comm = MPI.COMM_WORLD
    for name in ("Allreduce", "Bcast", "Barrier", "allgather", "bcast", "Get_rank", "Get_size"):
        if not hasattr(comm, name):
            raise TypeError(f"init: comm must be an mpi4py communicator or SerialComm (missing {name}), got {type(comm).__name__}")
    _state["comm"] = comm
    if abort_on_exception and comm.Get_size() > 1 and _state["hook"] is None:
        previous = sys.excepthook

        def hook(exc_type, exc, tb):
            sys.stdout.flush()
            sys.stderr.write(f"fastgrad.distributed: uncaught exception on rank {comm.Get_rank()}, aborting all ranks\n")
            sys.stderr.flush()
            previous(exc_type, exc, tb)
            sys.stderr.flush()
            # the launcher forwards a rank's output asynchronously and drops what it has not read when
            # Abort kills the job: under load the traceback was lost (seen in the test suite); give it time
            time.sleep(0.5)
            comm.Abort(1)

        sys.excepthook = hook
        _state["hook"] = (hook, previous)
    return comm


def get_comm():
    """The communicator set by :func:`init` (calls ``init()`` on first use)."""
    return _state["comm"] if _state["comm"] is not None else init()


def _resolve(comm):
    return get_comm() if comm is None else comm


def rank(comm=None) -> int:
    return int(_resolve(comm).Get_rank())


def world_size(comm=None) -> int:
    return int(_resolve(comm).Get_size())


def is_root(comm=None) -> bool:
    return rank(comm) == 0


def barrier(comm=None) -> None:
    _resolve(comm).Barrier()


def _signature(arrays: dict):
    return [(name, tuple(a.shape), str(a.dtype)) for name, a in arrays.items()]


def _check_same_everywhere(comm, value, what, where):
    """allgather ``value`` and raise ValueError on every rank if any rank differs from rank 0."""
    values = comm.allgather(value)
    for r, v in enumerate(values):
        if v != values[0]:
            raise ValueError(f"{where}: {what} differs between rank 0 ({values[0]!r}) and rank {r} ({v!r})"[:400])


def broadcast_parameters(model, root=0, comm=None) -> None:
    """Copy ``root``'s parameters into every rank's model (one Bcast of a fused buffer).

    ``model``: a Layer or Sequential, a list of layers, or an optimizer (the
    parameters it was built on, frozen ones included).  Raises ValueError on
    every rank when the parameter names, shapes or dtypes differ between ranks
    (checked first, so nothing is overwritten).
    """
    comm = _resolve(comm)
    source = model.model if callable(getattr(model, "step", None)) and hasattr(model, "model") else model
    params = {name: p for name, p, _ in named_parameters(source, trainable_only=False)}
    _check_same_everywhere(comm, _signature(params), "the model's parameters (name, shape, dtype)", "broadcast_parameters")
    if comm.Get_size() == 1 or not params:
        return
    dtype = np.result_type(*params.values())
    buf = np.empty(sum(p.size for p in params.values()), dtype=dtype)
    _pack(params.values(), buf)
    comm.Bcast(buf, root=root)
    _unpack(buf, params.values())


def _pack(arrays, buf, scale=None):
    offset = 0
    for a in arrays:
        view = buf[offset : offset + a.size]
        if scale is None:
            np.copyto(view, a.reshape(-1), casting="same_kind")
        else:
            np.multiply(a.reshape(-1), scale, out=view, casting="same_kind")
        offset += a.size
    return offset


def _unpack(buf, arrays):
    offset = 0
    for a in arrays:
        a[...] = buf[offset : offset + a.size].reshape(a.shape)
        offset += a.size


# -- sharding: pure functions of (n, batch_size, rank, world, seed, epoch) ------------------------
# epoch_order, batch_shards and shard_bounds live in fastgrad.training (the one training loop)


def shard_indices(n, batch_size, rank, world, epoch=0, seed=0, shuffle=True) -> list:
    """``batch_shards(epoch_order(n, epoch, seed, shuffle), batch_size, rank, world)``.

    Deterministic; across ranks every sample appears exactly once per epoch.
    """
    return batch_shards(epoch_order(n, epoch, seed, shuffle), batch_size, rank, world)


# -- gradient averaging ----------------------------------------------------------------------------

class StepStats:
    """Global results of one step's Allreduce: count, mean loss, correct predictions, seconds."""

    __slots__ = ("count", "loss", "correct", "seconds")

    def __init__(self, count, loss, correct, seconds):
        self.count, self.loss, self.correct, self.seconds = count, loss, correct, seconds

    def __repr__(self):
        return f"StepStats(count={self.count}, loss={self.loss}, correct={self.correct}, seconds={self.seconds:.3g})"


class GradientAllreducer:
    """Averages a model's gradients over ranks with ONE in-place Allreduce per step.

    The buffer is allocated once (and again only if the model's gradient
    layout changes): ``[grad_0, grad_1, ..., count, loss_sum, correct,
    failed_0 .. failed_{world-1}]`` in the gradients' dtype.  ``allreduce_seconds``
    accumulates the wall time of the Allreduce calls (it includes waiting for
    the slowest rank).
    """

    _META = 3  # count, loss_sum, correct

    def __init__(self, model, comm=None):
        if not (hasattr(model, "params") and hasattr(model, "grads")):
            raise TypeError(f"GradientAllreducer: model must have params and grads, got {type(model).__name__}")
        self.model = model
        self.comm = _resolve(comm)
        self.rank = int(self.comm.Get_rank())
        self.world = int(self.comm.Get_size())
        self._buffer = None
        self._layout = None
        self._op = None
        self.allreduce_seconds = 0.0
        self.calls = 0

    def _buffer_for(self, grads):
        layout = _signature(grads)
        if layout != self._layout:
            if not grads:
                raise ValueError("GradientAllreducer: model has no gradients to average")
            dtype = np.result_type(*grads.values())
            size = sum(g.size for g in grads.values())
            self._buffer = np.zeros(size + self._META + self.world, dtype=dtype)
            self._layout = layout
            self._size = size
        return self._buffer

    def _sum_op(self):
        if self._op is None and not isinstance(self.comm, SerialComm):
            from mpi4py import MPI

            self._op = (MPI.IN_PLACE, MPI.SUM)
        return self._op

    def allreduce(self, count=None, total=None, loss=None, correct=0, error=None) -> StepStats:
        """Replace every rank's gradients by the gradient of the global-batch mean loss.

        ``count``: samples this rank used in this step; ``total``: samples over
        all ranks (the global batch).  With both, each rank pre-scales by
        ``count / total`` (exact for any split; 1/world for equal shards).  With
        ``count`` only, the count-weighted sum is divided by the summed count
        after the Allreduce.  With neither, equal shards are assumed (scale
        1/world).  ``loss`` (this rank's mean loss) and ``correct`` feed the
        returned StepStats.  ``error``: an exception raised on this rank during
        the step; if any rank passes one, every rank raises
        ``RuntimeError("rank k failed: ...")`` after the Allreduce.
        """
        grads = self.model.grads
        buf = self._buffer_for(grads)
        dt = buf.dtype.type
        size = self._size
        failed = error is not None
        local = 0.0 if failed or count is None else float(count)
        if failed:
            buf[:size] = 0
            scale = None
        elif count is None:
            scale = dt(1.0 / self.world)
        elif total is not None:
            scale = dt(local / float(total)) if total else dt(0.0)
        else:
            scale = dt(local)
        if scale is not None:
            _pack(grads.values(), buf, scale)
        meta = buf[size:]
        meta[:] = 0
        meta[0] = local
        meta[1] = 0.0 if failed or loss is None else float(loss) * (local if count is not None else 1.0)
        meta[2] = 0 if failed else correct
        meta[self._META + self.rank] = 1.0 if failed else 0.0
        start = time.perf_counter()
        op = self._sum_op()
        if op is None:
            self.comm.Allreduce(buf, buf)
        else:
            self.comm.Allreduce(op[0], buf, op=op[1])
        seconds = time.perf_counter() - start
        self.allreduce_seconds += seconds
        self.calls += 1
        flags = meta[self._META :]
        if np.any(flags != 0):
            self._raise_failure(flags, error)
        global_count = float(meta[0])
        if count is not None and total is None and global_count > 0:
            buf[:size] *= dt(1.0 / global_count)
        _unpack(buf[:size], grads.values())
        if count is None:
            mean_loss = float(meta[1]) / self.world if loss is not None else None
        else:
            mean_loss = float(meta[1]) / global_count if global_count > 0 and loss is not None else None
        return StepStats(int(round(global_count)), mean_loss, int(round(float(meta[2]))), seconds)

    def _raise_failure(self, flags, error):
        message = None if error is None else f"{type(error).__name__}: {error}"
        messages = self.comm.allgather(message)
        bad = [r for r in range(self.world) if flags[r] != 0]
        parts = [f"rank {r} failed: {messages[r] or 'unknown error'}" for r in bad]
        text = "; ".join(parts)
        if error is not None:
            raise RuntimeError(text) from error
        raise RuntimeError(text)


class DistributedOptimizer:
    """Wraps an SGD/Adam optimizer: ``step()`` = Allreduce-average the gradients, then the inner step.

    Other attributes (``lr``, ``state``, ``model``, ...) are the inner
    optimizer's.  In a hand-written loop, run forward/backward inside
    ``with opt.guard():`` so an exception on one rank is reported by ``step()``
    on every rank instead of leaving the others blocked in the Allreduce::

        with opt.guard():
            out = model.forward(xb); loss(out, yb); model.backward(loss.backward())
        opt.step(count=len(xb), total=global_batch)

    The model's parameters are broadcast from rank 0 when the wrapper is built
    (``broadcast=False`` to skip), so every rank starts from the same point.
    """

    def __init__(self, optimizer, comm=None, broadcast=True):
        if not (hasattr(optimizer, "step") and hasattr(optimizer, "model")):
            raise TypeError(f"DistributedOptimizer: optimizer must be a fastgrad optimizer (SGD, Adam), got {type(optimizer).__name__}")
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError("DistributedOptimizer: optimizer is already distributed")
        self.__dict__["optimizer"] = optimizer
        # the gradients it averages are those the optimizer trains (frozen layers need none)
        self.__dict__["reducer"] = GradientAllreducer(optimizer, comm)
        self.__dict__["_error"] = None
        if broadcast:
            broadcast_parameters(optimizer, comm=self.reducer.comm)

    def __getattr__(self, name):
        return getattr(self.__dict__["optimizer"], name)

    def __setattr__(self, name, value):
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.optimizer, name, value)

    @property
    def comm(self):
        return self.reducer.comm

    def zero_grad(self):
        self.optimizer.zero_grad()

    @contextlib.contextmanager
    def guard(self):
        """Catch an exception of this rank's step so the next ``step()``/``synchronize()`` reports it everywhere."""
        try:
            yield
        except Exception as exc:  # any failure must reach the other ranks
            self.__dict__["_error"] = exc

    def synchronize(self, count=None, total=None, loss=None, correct=0) -> StepStats:
        """Only the Allreduce (see GradientAllreducer.allreduce); raises if any rank failed."""
        error, self.__dict__["_error"] = self.__dict__["_error"], None
        return self.reducer.allreduce(count=count, total=total, loss=loss, correct=correct, error=error)

    def step(self, count=None, total=None, loss=None, correct=0) -> StepStats:
        stats = self.synchronize(count=count, total=total, loss=loss, correct=correct)
        self.optimizer.step()
        return stats


# -- training loop ---------------------------------------------------------------------------------

class MPIReplicas:
    """The MPI side of :func:`fastgrad.training.train` (rank r of ``world``).

    Each rank trains on its shard of every global batch; ``synchronize`` is the
    step's one Allreduce (gradients, loss, correct count, failure flags); an
    exception inside ``guard()`` is reported on every rank by that Allreduce;
    rank 0's seed and parameters are broadcast; validation is sharded.
    """

    def __init__(self, optimizer, comm):
        self.distributed = optimizer
        self.optimizer = optimizer.optimizer
        self.comm = comm
        self.rank, self.world = int(comm.Get_rank()), int(comm.Get_size())

    def common(self, value):
        return self.comm.bcast(value, root=0)

    def agree(self, value, what, where) -> None:
        _check_same_everywhere(self.comm, value, what, where)

    def broadcast(self, model) -> None:
        broadcast_parameters(model, comm=self.comm)

    def guard(self):
        return self.distributed.guard()

    def synchronize(self, count, total, loss, correct):
        stats = self.distributed.synchronize(count=count, total=total, loss=loss, correct=correct)
        return stats.loss, stats.correct

    def step(self) -> None:
        self.optimizer.step()

    def evaluate(self, model, x, y, loss):
        return evaluate(model, x, y, loss, comm=self.comm)

    def on_root(self, fn, root=0):
        return run_on_root(fn, root, self.comm)


def run_on_root(fn, root=0, comm=None):
    """``fn()`` on rank ``root`` only; every rank waits, and raises RuntimeError if it failed there.

    Returns ``fn()``'s result on the root and None elsewhere; the root chains
    the original error.
    """
    comm = _resolve(comm)
    error, result = None, None
    if comm.Get_rank() == root:
        try:
            result = fn()
        except Exception as exc:  # reported to every rank below
            error = exc
    message = comm.bcast(None if error is None else f"{type(error).__name__}: {error}", root=root)
    if message is not None:
        raise RuntimeError(f"rank {root} failed: {message}") from error
    return result


def fit(
    model,
    x,
    y,
    loss,
    optimizer,
    epochs=1,
    batch_size=32,
    validation_data=None,
    progress=True,
    shuffle=True,
    seed=None,
    clip_norm=None,
    comm=None,
    initial_epoch=0,
    callbacks=None,
    augment=None,
) -> dict:
    """Data-parallel ``Sequential.fit``: same arguments, same history dict, on every rank.

    Every rank passes the same ``x``, ``y`` (at least the same number of
    samples); ``seed=None`` takes rank 0's ``fg.initial_seed()``.
    ``batch_size`` is the GLOBAL batch: each rank runs forward/backward on
    about ``batch_size / world`` samples of it, so the learning rate and the
    result do not depend on the number of ranks (up to rounding; with one
    rank this is Sequential.fit's loop exactly: both are
    :func:`fastgrad.training.train`).  ``optimizer`` is a DistributedOptimizer
    or a plain SGD/Adam (wrapped here).  Rank 0's parameters are broadcast
    first.  ``clip_norm`` clips the averaged (global) gradient.  Only rank 0
    draws progress; callbacks run on every rank with the same logs (their
    file writes, e.g. ModelCheckpoint, on rank 0 only).  history: ``loss``,
    ``time``, ``accuracy`` (CrossEntropyLoss with int labels), ``val_loss`` /
    ``val_accuracy`` (validation set sharded over ranks, results summed).
    A failure on any rank raises RuntimeError("rank k failed: ...") on all
    ranks; a non-finite global loss or gradient norm raises FloatingPointError
    on all ranks.
    """
    where = "distributed.fit"
    comm = _resolve(comm)
    if not isinstance(optimizer, DistributedOptimizer):
        if not (hasattr(optimizer, "step") and hasattr(optimizer, "model")):
            raise TypeError(f"{where}: optimizer must be SGD/Adam or a DistributedOptimizer, got {type(optimizer).__name__}")
        optimizer = DistributedOptimizer(optimizer, comm=comm, broadcast=False)
    return train(
        model, x, y, loss, MPIReplicas(optimizer, comm), epochs=epochs, batch_size=batch_size,
        validation_data=validation_data, progress=progress, shuffle=shuffle, seed=seed, clip_norm=clip_norm,
        initial_epoch=initial_epoch, callbacks=callbacks, augment=augment, where=where,
    )


def evaluate(model, x, y, loss, batch_size=256, comm=None):
    """(mean loss, accuracy or None) over a data set sharded over ranks; the same result on every rank.

    Rank r evaluates its contiguous ``1/world`` of the samples; one small
    Allreduce (float64) sums count-weighted losses and correct predictions.
    A failure on any rank raises RuntimeError on every rank.
    """
    comm = _resolve(comm)
    r, world = int(comm.Get_rank()), int(comm.Get_size())
    x = as_input(x, input_dtype(model), "x", "distributed.evaluate")
    y = np.asarray(y)
    lo, hi = shard_bounds(x.shape[0], r, world)
    classify = isinstance(loss, CrossEntropyLoss) and y.dtype.kind in "iu"
    sums = np.zeros(3 + world)
    error = None
    if hi > lo:
        try:
            out = model.predict(x[lo:hi], batch_size)
            sums[0] = hi - lo
            sums[1] = loss(out, y[lo:hi]) * (hi - lo)
            if classify:
                sums[2] = float(np.sum(np.argmax(out, axis=1) == y[lo:hi]))
        except Exception as exc:  # reported to every rank below
            error = exc
            sums[:3] = 0
            sums[3 + r] = 1
    if not isinstance(comm, SerialComm):
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
    if np.any(sums[3:] != 0):
        messages = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
        text = "; ".join(f"rank {k} failed: {messages[k]}" for k in range(world) if sums[3 + k] != 0)
        raise RuntimeError(text) from error
    if sums[0] == 0:
        raise ValueError("distributed.evaluate: x is empty")
    return float(sums[1] / sums[0]), (float(sums[2] / sums[0]) if classify else None)


def save(model, path, root=0, comm=None) -> None:
    """``fg.save`` on rank ``root`` only; every rank waits until the file is written.

    If the write fails on the root, every rank raises RuntimeError (the root
    chains the original error).
    """
    from .io import save as save_model

    run_on_root(lambda: save_model(model, path), root, comm)
