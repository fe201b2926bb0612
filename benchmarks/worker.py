"""One benchmark process: times one library, or measures the GEMM peak, or a compile time.

The parent (:mod:`benchmarks.__main__`) starts one of these per library, because
numba's and OpenMP's worker threads spin after a parallel region and steal the
cores from each other when two thread pools live in one process.  The parent
sets NUMBA_NUM_THREADS / OMP_NUM_THREADS / *BLAS_NUM_THREADS / PJRT_NPROC in the environment
before the start, so every pool has the same size from its first use.

Modes (results are written as JSON to ``--json``, rewritten after every case so
a crash or a timeout loses only the case that was running)::

    python -m benchmarks.worker --lib fastgrad --cases dense/S,softmax/M --json out.json
    python -m benchmarks.worker --peak --json out.json         NumPy GEMM GFLOP/s (the machine's peak)
    python -m benchmarks.worker --compile cold --json out.json  import + fastgrad.warmup(float32)
    python -m benchmarks.worker --compile warm --json out.json  import + first MLP training step

Timing: ``time.perf_counter`` around each call, warmup calls excluded, the
garbage collector off while timing (as timeit does); a case runs until it has
``--repeats`` calls or has used ``--budget`` seconds with at least
``--min-repeats`` calls.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback

import numpy as np

from .cases import DTYPES, PASSES, NotAvailable, case_from_id, flops, make_inputs

#: correctness guard tolerance: max |a - ref| / max |ref| per output array
TOLERANCE = {"float32": 2e-3, "float64": 1e-8}


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def _peer(lib: str):
    if lib == "numpy":
        from . import peer_numpy as mod
    elif lib == "fastgrad":
        from . import peer_fastgrad as mod
    elif lib == "torch":
        from . import peer_torch as mod
    elif lib == "jax":
        from . import peer_jax as mod
    else:
        raise ValueError(f"unknown library {lib!r}")
    return mod


def time_calls(fn, warmup: int, repeats: int, min_repeats: int, budget: float, warmup_s: float = 0.0) -> list:
    """Seconds of each timed call of ``fn`` (after ``warmup`` untimed calls, and at least ``warmup_s`` seconds of them)."""
    start = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - start < warmup_s:
        fn()
        done += 1
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        while len(times) < repeats:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if len(times) >= min_repeats and time.perf_counter() - start > budget:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def compare(outputs: list, reference: list, dtype: str) -> dict:
    """The correctness guard: same number of arrays, same shapes, values within TOLERANCE[dtype]."""
    if len(outputs) != len(reference):
        return {"status": "FAIL", "detail": f"{len(outputs)} outputs, reference has {len(reference)}"}
    worst = 0.0
    for k, (out, ref) in enumerate(zip(outputs, reference)):
        out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if out.shape != ref.shape:
            return {"status": "FAIL", "detail": f"output {k} has shape {out.shape}, reference {ref.shape}"}
        if ref.size == 0:
            continue
        scale = max(float(np.max(np.abs(ref))), 1e-30)
        err = float(np.max(np.abs(out - ref))) / scale
        if not np.isfinite(err):
            return {"status": "FAIL", "detail": f"output {k} is not finite", "max_rel_err": None}
        worst = max(worst, err)
    ok = worst <= TOLERANCE[dtype]
    return {"status": "ok" if ok else "FAIL", "max_rel_err": worst, "tolerance": TOLERANCE[dtype]}


def _ref_path(ref_dir, case, dtype: str):
    return None if not ref_dir else os.path.join(ref_dir, f"{case.op}_{case.size}_{dtype}.npz")


def reference_outputs(case, dtype: str, ref_dir=None) -> tuple:
    """The NumPy peer's (fwd outputs, fwd+bwd outputs) of a fresh bench.

    The numpy worker saves them in ``ref_dir`` and the other workers load them, so
    no BLAS thread pool ever runs (and spins) inside the fastgrad or torch process.
    Without a saved file they are computed here.
    """
    from . import peer_numpy

    path = _ref_path(ref_dir, case, dtype)
    if path and os.path.exists(path):
        with np.load(path, allow_pickle=False) as f:
            n_fwd, n_bwd = int(f["n_fwd"]), int(f["n_bwd"])
            return [f[f"fwd_{k}"] for k in range(n_fwd)], [f[f"bwd_{k}"] for k in range(n_bwd)]
    ref = peer_numpy.build(case, dtype, make_inputs(case.op, case.shape, dtype))
    return peer_numpy.to_numpy(ref.forward()), peer_numpy.to_numpy(ref.fwdbwd())


def save_reference(case, dtype: str, ref_dir: str) -> None:
    fwd, bwd = reference_outputs(case, dtype)
    arrays = {f"fwd_{k}": a for k, a in enumerate(fwd)} | {f"bwd_{k}": a for k, a in enumerate(bwd)}
    np.savez(_ref_path(ref_dir, case, dtype), n_fwd=len(fwd), n_bwd=len(bwd), **arrays)


def check_case(peer, case, dtype: str, ref_dir=None) -> dict:
    """Run a fresh peer bench once (fwd, then fwd+bwd) and compare with the NumPy reference.

    For the training steps, fwd+bwd is the first SGD step from the shared initial
    weights, so the loss and every updated parameter are compared.
    """
    bench = peer.build(case, dtype, make_inputs(case.op, case.shape, dtype))
    out_fwd = peer.to_numpy(bench.forward())
    out_bwd = peer.to_numpy(bench.fwdbwd())
    ref_fwd, ref_bwd = reference_outputs(case, dtype, ref_dir)
    return {"fwd": compare(out_fwd, ref_fwd, dtype), "fwd+bwd": compare(out_bwd, ref_bwd, dtype)}


def run_library(args) -> int:
    """Time every (case, dtype, pass) of one library; one JSON row each."""
    threads = args.threads
    out = {"lib": args.lib, "threads": threads, "rows": [], "version": None, "error": None}
    try:
        peer = _peer(args.lib)
        if hasattr(peer, "configure"):
            peer.configure(threads)
        out["version"] = peer.version()
        if args.lib == "fastgrad":
            import fastgrad

            fastgrad.set_num_threads(threads)
    except NotAvailable as exc:
        out["error"] = f"n/a: {exc}"
        _write_json(args.json, out)
        print(f"[{args.lib}] {exc}", file=sys.stderr)
        return 0
    _write_json(args.json, out)
    for case_id in args.cases.split(","):
        case = case_from_id(case_id)
        for dtype in args.dtypes.split(","):
            base = {"lib": args.lib, "case": case.id, "op": case.op, "size": case.size, "shape": list(case.shape), "dtype": dtype}
            try:
                check = {p: {"status": "reference" if args.lib == "numpy" else "skipped"} for p in PASSES}
                if args.lib == "numpy" and args.ref_dir and not args.no_check:
                    save_reference(case, dtype, args.ref_dir)
                elif args.lib != "numpy" and not args.no_check:
                    check = check_case(peer, case, dtype, args.ref_dir)
                bench = peer.build(case, dtype, make_inputs(case.op, case.shape, dtype))
                for pass_ in PASSES:
                    fn = bench.forward if pass_ == "fwd" else bench.fwdbwd
                    times = time_calls(fn, args.warmup, args.repeats, args.min_repeats, args.budget, args.warmup_s)
                    ms = np.array(times) * 1e3
                    med = float(np.median(ms))
                    row = dict(base, **{
                        "pass": pass_,
                        "status": "ok",
                        # a summary, not every call (up to 3000 per pass would make the
                        # committed JSON megabytes)
                        "calls": int(ms.size),
                        "quartiles_ms": [float(np.percentile(ms, 25)), float(np.percentile(ms, 75))],
                        "median_ms": med,
                        "min_ms": float(ms.min()),
                        "max_ms": float(ms.max()),
                        "flops": flops(case.op, case.shape, pass_),
                        "gflops": flops(case.op, case.shape, pass_) / (med * 1e-3) / 1e9,
                        "check": check[pass_],
                    })
                    out["rows"].append(row)
                    chk = check[pass_]["status"]
                    print(f"[{args.lib}] {case.id:<14} {dtype:<8} {pass_:<8} median {med:10.3f} ms  "
                          f"({len(times)} calls)  check {chk}", file=sys.stderr, flush=True)
            except NotAvailable as exc:
                for pass_ in PASSES:
                    out["rows"].append(dict(base, **{"pass": pass_, "status": "n/a", "error": str(exc)}))
                print(f"[{args.lib}] {case.id:<14} {dtype:<8} n/a: {exc}", file=sys.stderr, flush=True)
            except Exception as exc:  # one broken case must not end the run
                msg = f"{type(exc).__name__}: {exc}"
                done = {r["pass"] for r in out["rows"] if r["case"] == case.id and r["dtype"] == dtype}
                for pass_ in PASSES:
                    if pass_ not in done:
                        out["rows"].append(dict(base, **{"pass": pass_, "status": "error", "error": msg[:500]}))
                print(f"[{args.lib}] {case.id:<14} {dtype:<8} ERROR {msg}", file=sys.stderr, flush=True)
                traceback.print_exc(file=sys.stderr)
            _write_json(args.json, out)
    return 0


def run_peak(args) -> int:
    """The machine's practical peak: NumPy (BLAS) GEMM n^3 in each dtype, best and median GFLOP/s."""
    n = args.gemm_n
    out = {"n": n, "threads": args.threads, "numpy": np.__version__, "blas": _blas_name()}
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        c = np.empty((n, n), dtype)
        times = time_calls(lambda: np.matmul(a, b, out=c), 1, args.repeats, args.min_repeats, args.budget)
        fl = 2.0 * n**3
        out[dtype] = {
            "best_gflops": fl / min(times) / 1e9,
            "median_gflops": fl / float(np.median(times)) / 1e9,
            "times_ms": [t * 1e3 for t in times],
        }
        print(f"[peak] numpy GEMM {n}^3 {dtype}: {out[dtype]['best_gflops']:.1f} GFLOP/s (best)", file=sys.stderr, flush=True)
    _write_json(args.json, out)
    return 0


def _blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        return str(cfg["Build Dependencies"]["blas"].get("name", "unknown"))
    except Exception:
        return "unknown"


def run_compile(args) -> int:
    """Cold: import + compile every registered kernel for float32 into the (empty) cache dir.

    Warm: a second process on the same cache dir: import + build the digits MLP + one
    training step (the kernels load from the cache instead of compiling).
    """
    out = {"mode": args.compile, "cache_dir": os.environ.get("FASTGRAD_CACHE_DIR"), "threads": args.threads}
    t0 = time.perf_counter()
    import fastgrad

    out["import_s"] = time.perf_counter() - t0
    if args.compile == "cold":
        t1 = time.perf_counter()
        per_kernel = fastgrad.warmup(dtypes=("float32",))
        out["warmup_s"] = time.perf_counter() - t1
        out["per_kernel_s"] = per_kernel
    else:
        from .cases import Case
        from .peer_fastgrad import _mlp, _Train

        inputs = make_inputs("train_mlp", (32,), "float32")
        t1 = time.perf_counter()
        _Train(_mlp("float32"), inputs).fwdbwd()
        out["first_step_s"] = time.perf_counter() - t1
        out["case"] = Case("train_mlp", "S", (32,)).id
    out["total_s"] = time.perf_counter() - t0
    out["cache_enabled"] = bool(fastgrad._jit.cache_enabled())
    print(f"[compile] {args.compile}: {out['total_s']:.2f} s", file=sys.stderr, flush=True)
    _write_json(args.json, out)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker", description="one benchmark process (started by python -m benchmarks)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--lib", choices=["numpy", "fastgrad", "torch", "jax"])
    mode.add_argument("--peak", action="store_true")
    mode.add_argument("--compile", choices=["cold", "warm"])
    p.add_argument("--json", required=True)
    p.add_argument("--cases", default="dense/S")
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--threads", type=int, default=int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1)))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--warmup-s", type=float, default=0.0, help="keep warming up for at least this many seconds")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--min-repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=5.0, help="seconds per timed pass after min-repeats")
    p.add_argument("--gemm-n", type=int, default=2048)
    p.add_argument("--no-check", action="store_true", help="skip the correctness guard")
    p.add_argument("--ref-dir", default=None, help="numpy: save reference outputs here; others: load them from here")
    args = p.parse_args(argv)
    print(f"[worker] pid {os.getpid()} python {platform.python_version()} threads {args.threads}", file=sys.stderr, flush=True)
    if args.peak:
        return run_peak(args)
    if args.compile:
        return run_compile(args)
    return run_library(args)


if __name__ == "__main__":
    sys.exit(main())
