"""Data-parallel throughput: samples/s of distributed.fit for 1 vs 2 MPI ranks, and the Allreduce share.

    python -m benchmarks.bench_distributed [--epochs 3] [--batch-size 64] [--model cnn|mlp]

Launches ``mpiexec -n K`` (K = 1, 2; one numba thread per rank) on the digits
CNN (fastgrad.examples.cnn; falls back to the digits MLP if Conv2D is not
available), plus one rank with 2 numba threads as the threads-instead-of-ranks
baseline.  The global batch is the same for every K, so every configuration
computes the same training run.  Per configuration it reports:

- samples/s of ``distributed.fit`` (after a warm-up epoch that compiles);
- a profiled loop over the same batches split into compute (forward+backward
  on the local shard), wait (a Barrier: load imbalance between ranks) and the
  gradient Allreduce proper; ``allreduce_share`` = Allreduce / step time.

Writes benchmarks/results/distributed.json and prints a table.  On a shared
2-core machine the numbers are noisy: each rank needs a core of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "distributed.json"


def _mpiexec():
    here = os.path.dirname(os.path.realpath(sys.executable))
    return (os.environ.get("FASTGRAD_MPIEXEC") or shutil.which("mpiexec", path=here)
            or shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec"))


def _load(model_name, dtype):
    """(model, x_train, y_train, model name actually used)."""
    from fastgrad.examples.data import load_digits_split

    x, y, _, _ = load_digits_split(seed=0, dtype=dtype)
    if model_name == "cnn":
        try:
            from fastgrad.examples.cnn import build
        except ImportError:
            model_name = "mlp"
        else:
            mean, std = x.mean(), x.std()
            return build(0, dtype), ((x - mean) / std).astype(dtype).reshape(-1, 1, 8, 8), y, "cnn"
    from fastgrad.examples.mlp import build

    mean, std = x.mean(axis=0), x.std(axis=0) + 0.1
    return build(0, dtype), ((x - mean) / std).astype(dtype), y, model_name


def worker(args):
    """One rank of one configuration (run under mpiexec)."""
    import numpy as np

    import fastgrad as fg
    from fastgrad import distributed as dist

    comm = dist.init()
    r, world = dist.rank(), dist.world_size()
    model, x, y, used = _load(args.model, np.float32)
    loss = fg.CrossEntropyLoss()
    opt = dist.DistributedOptimizer(fg.Adam(model, 1e-3))
    dist.fit(model, x, y, loss, opt, epochs=1, batch_size=args.batch_size, progress=False, seed=1)  # compile + warm up

    comm.Barrier()
    opt.reducer.allreduce_seconds, opt.reducer.calls = 0.0, 0
    start = time.perf_counter()
    dist.fit(model, x, y, loss, opt, epochs=args.epochs, batch_size=args.batch_size, progress=False, seed=2)
    fit_seconds = time.perf_counter() - start
    fit_allreduce = opt.reducer.allreduce_seconds

    # profiled loop: compute / wait (imbalance) / Allreduce, per step
    compute = wait = update = 0.0
    steps = 0
    for epoch in range(args.epochs):
        shards = dist.shard_indices(x.shape[0], args.batch_size, r, world, epoch=epoch, seed=3)
        for b, idx in enumerate(shards):
            t0 = time.perf_counter()
            opt.zero_grad()
            with opt.guard():
                loss(model.forward(x[idx]), y[idx])
                model.backward(loss.backward())
            t1 = time.perf_counter()
            comm.Barrier()
            t2 = time.perf_counter()
            opt.step(count=len(idx), total=min(args.batch_size, x.shape[0] - b * args.batch_size))
            t3 = time.perf_counter()
            compute, wait, update = compute + (t1 - t0), wait + (t2 - t1), update + (t3 - t2)
            steps += 1
    # opt.step() = Allreduce + optimizer update; the Allreduce alone comes from the reducer's own clock
    pure_reduce = opt.reducer.allreduce_seconds - fit_allreduce
    step_total = compute + wait + update
    times = comm.allgather((fit_seconds, compute, wait, pure_reduce, step_total))
    if r == 0:
        slowest = max(times, key=lambda t: t[0])
        n_samples = x.shape[0] * args.epochs
        grad_floats = sum(g.size for g in model.grads.values())
        result = {
            "ranks": world,
            "numba_threads": int(os.environ.get("NUMBA_NUM_THREADS", "0") or 0),
            "model": used,
            "params": int(grad_floats),
            "allreduce_bytes": int(4 * (grad_floats + 3 + world)),
            "samples_per_second": n_samples / slowest[0],
            "fit_seconds": slowest[0],
            "fit_allreduce_share": fit_allreduce / fit_seconds,
            "steps": steps,
            "compute_ms_per_step": 1e3 * max(t[1] for t in times) / steps,
            "wait_ms_per_step": 1e3 * max(t[2] for t in times) / steps,
            "allreduce_ms_per_step": 1e3 * max(t[3] for t in times) / steps,
            "allreduce_share": max(t[3] / t[4] for t in times),
        }
        with open(args.out, "w") as fh:
            json.dump(result, fh)


def run(args):
    mpiexec = _mpiexec()
    if mpiexec is None:
        sys.exit("bench_distributed: mpiexec not found; pip install mpi4py mpich")
    configs = [(1, 1), (2, 1), (1, 2)]  # (ranks, numba threads per rank)
    rows = []
    for ranks, threads in configs:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.json")
            env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            cmd = [mpiexec, "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), "--worker", "--out", out,
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--model", args.model]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
            if proc.returncode != 0:
                sys.exit(f"bench_distributed: {ranks} rank(s) failed:\n{proc.stdout}\n{proc.stderr}")
            with open(out) as fh:
                rows.append(json.load(fh))
    base = rows[0]["samples_per_second"]
    for row in rows:
        row["speedup_vs_1_rank"] = row["samples_per_second"] / base
    header = (f"{'ranks x threads':>15} {'samples/s':>10} {'speedup':>8} {'compute ms':>11} {'wait ms':>8} "
              f"{'allreduce ms':>13} {'allreduce %':>12}")
    print(f"digits {rows[0]['model'].upper()} ({rows[0]['params']:,} params, float32), global batch {args.batch_size}, "
          f"{args.epochs} epochs; per step, slowest rank:")
    print(header)
    print("-" * len(header))
    for row in rows:
        label = f"{row['ranks']} x {row['numba_threads']}"
        print(f"{label:>15} {row['samples_per_second']:>10.0f} {row['speedup_vs_1_rank']:>7.2f}x "
              f"{row['compute_ms_per_step']:>11.2f} {row['wait_ms_per_step']:>8.2f} {row['allreduce_ms_per_step']:>13.3f} "
              f"{100 * row['allreduce_share']:>11.1f}%")
    report = {
        "benchmark": "distributed",
        "model": rows[0]["model"],
        "fallback_to_mlp": args.model == "cnn" and rows[0]["model"] != "cnn",
        "global_batch_size": args.batch_size,
        "epochs": args.epochs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "one numba thread per rank unless stated; shared machine, numbers are noisy",
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
