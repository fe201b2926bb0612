"""Run under ``mpiexec -n 2``: data-parallel training scenarios checked by tests/test_distributed.py.

Usage: mpiexec -n 2 python tests/mpi_scripts/equivalence.py OUTDIR

Rank 0 writes OUTDIR/<scenario>.npz (parameters, via distributed.save) and
OUTDIR/results.json; every rank prints one "rank R <scenario>: ..." line per
failure scenario.
"""

import json
import os
import sys

import numpy as np

import fastgrad as fg
from fastgrad import distributed as dist

# the test imports these to build the single-process reference
N_FEATURES, N_HIDDEN, N_CLASSES = 6, 8, 3


def build(seed):
    return fg.Sequential(
        fg.Dense(N_FEATURES, N_HIDDEN, "tanh", dtype=np.float64, seed=seed),
        fg.Dense(N_HIDDEN, N_CLASSES, dtype=np.float64, seed=seed + 1),
    )


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    return x, rng.integers(0, N_CLASSES, n), rng.normal(size=(n, N_CLASSES))


# name -> (n, batch_size, epochs, optimizer factory, loss name, clip_norm)
SCENARIOS = {
    # 11 steps per epoch, last global batch 5 samples -> shards of 2 and 3 (count weighting)
    "sgd": (325, 32, 2, lambda m: fg.SGD(m, 0.1, momentum=0.9, nesterov=True), "ce", None),
    # 10 equal steps per epoch, global-norm clipping after the average
    "adam": (320, 32, 2, lambda m: fg.Adam(m, 1e-2), "mse", 0.5),
}


def make_loss(name):
    return fg.CrossEntropyLoss() if name == "ce" else fg.MSELoss()


def targets(name, y_int, y_real):
    return y_int if name == "ce" else y_real


class Score:
    """Puts a scripted "score" into the epoch's logs (the same on every rank)."""

    def __init__(self, values):
        self.values = values

    def on_epoch_end(self, epoch, logs, model):
        logs["score"] = self.values[epoch]


def main(outdir):
    comm = dist.init()
    r, world = dist.rank(), dist.world_size()
    assert world == 2, f"expected 2 ranks, got {world} (is mpiexec from the same MPI as mpi4py?)"
    results = {"world": world}
    for name, (n, batch, epochs, make_opt, loss_name, clip) in SCENARIOS.items():
        x, y_int, y_real = data(n)
        model = build(100 + r)  # different on each rank: fit must broadcast rank 0's parameters
        opt = dist.DistributedOptimizer(make_opt(model), broadcast=False)
        y = targets(loss_name, y_int, y_real)
        hist = dist.fit(model, x, y, make_loss(loss_name), opt, epochs=epochs, batch_size=batch, progress=False, seed=7,
                        clip_norm=clip, validation_data=(x[:50], y[:50]))
        dist.save(model, os.path.join(outdir, f"{name}.npz"))
        # every rank holds bitwise the same parameters, and the file rank 0 wrote
        mine = np.concatenate([p.ravel() for p in model.params.values()])
        others = comm.allgather(mine.tobytes())
        loaded = fg.load(os.path.join(outdir, f"{name}.npz"))
        same_file = all(np.array_equal(loaded.params[k], model.params[k]) for k in model.params)
        results[name] = {"history": hist, "ranks_identical": all(o == others[0] for o in others), "file_matches": same_file,
                         "allreduce_calls": opt.reducer.calls}

    # callbacks: every rank sees the same logs, so schedules and early stopping agree; rank 0 writes the checkpoint
    x, y_int, _ = data(96)
    model = build(5)
    opt = fg.SGD(model, 0.2, momentum=0.9)
    stop = fg.EarlyStopping(monitor="score", patience=2)
    path = os.path.join(outdir, "callbacks.npz")
    hist = dist.fit(model, x, y_int, fg.CrossEntropyLoss(), opt, epochs=8, batch_size=16, progress=False, seed=3,
                    callbacks=[Score([3.0, 2.0, 2.5, 2.6, 1.0, 1.0, 1.0, 1.0]), fg.StepLR(opt, 2, 0.5), stop, fg.ModelCheckpoint(path)])
    saved = fg.load_checkpoint(path)
    results["callbacks"] = {
        "epochs": len(hist["loss"]), "stopped_epoch": stop.stopped_epoch, "lr_per_rank": comm.allgather(opt.lr),
        "checkpoint_epoch": saved.epoch,
        "checkpoint_matches": all(np.array_equal(saved.model.params[k], v) for k, v in model.params.items()),
    }

    # a rank that fails: rank 1's labels are out of range, so its loss raises
    x, y_int, _ = data(64)
    bad = y_int.copy() if r == 0 else np.full_like(y_int, 99)
    model = build(0)
    try:
        dist.fit(model, x, bad, fg.CrossEntropyLoss(), fg.SGD(model, 0.1), epochs=1, batch_size=16, progress=False)
        print(f"rank {r} failure: no error", flush=True)
    except RuntimeError as exc:
        print(f"rank {r} failure: RuntimeError: {exc}", flush=True)

    # ranks that disagree on the data set size refuse to start (instead of a hang at the last step)
    try:
        dist.fit(model, x[: 64 - r], y_int[: 64 - r], fg.CrossEntropyLoss(), fg.SGD(model, 0.1), progress=False)
        print(f"rank {r} mismatch: no error", flush=True)
    except ValueError as exc:
        print(f"rank {r} mismatch: ValueError: {exc}", flush=True)

    # the communicator is still usable after the caught failures
    comm.Barrier()
    if r == 0:
        with open(os.path.join(outdir, "results.json"), "w") as fh:
            json.dump(results, fh)


if __name__ == "__main__":
    main(sys.argv[1])
