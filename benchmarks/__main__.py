"""``python -m benchmarks`` (also ``python -m fastgrad bench ARGS``): the fastgrad benchmark runner.

Times forward and forward+backward of dense, conv2d, LSTM and softmax on fixed
S/M/L shapes (``benchmarks/cases.py``), float32 and float64, plus one training
step of the digits MLP and CNN, for fastgrad, a vectorised NumPy peer, and
PyTorch CPU and JAX CPU when installed.  PyTorch and JAX are optional and never
dependencies of fastgrad; to include them::

    pip install torch==2.13.0 jax==0.10.2

Every library runs in its own subprocess (``python -m benchmarks.worker``) with
the same thread count, because numba's and OpenMP's thread pools spin after a
parallel region and steal each other's cores in one process.  Separate processes
also measure the machine's peak (a NumPy GEMM) and fastgrad's compile times
(cold: a fresh FASTGRAD_CACHE_DIR; warm: a second process on the same directory).

Outputs (``--out-dir``, default ``benchmarks/results``): ``latest.json`` (all
timings, machine, versions, threads, date, load average), ``latest.md`` (the
table) and ``latest.png`` (ratio chart, needs matplotlib); ``--quick`` writes
``quick.*`` instead, so it never overwrites a full run.  ``--update-readme`` also puts
the table between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` in README.md.

Examples::

    python -m benchmarks --quick                 # ~2 minutes: S and M shapes, few repeats
    python -m benchmarks                         # the full run (quiet machine!)
    python -m benchmarks --ops dense,softmax --sizes L --libs fastgrad,torch --threads 1
    python -m benchmarks --baseline ../old-checkout   # also time an older fastgrad: "x before"

A full run times every library ``--rounds`` times (default 3), interleaved op by
op (numpy, fastgrad, torch, numpy, fastgrad, torch, ...), and reports the
median of the rounds' medians: a slow spell of the machine hits one round of
every library instead of all of one library's calls.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from . import report
from .cases import DTYPES, OPS, all_cases

ROOT = Path(__file__).resolve().parents[1]
LIBS = ("numpy", "fastgrad", "torch", "jax")

#: (repeats, min_repeats, warmup, budget seconds per timed pass, GEMM repeats).
#: A full pass times for about ``budget`` seconds (at least min_repeats calls,
#: at most repeats) after at least WARMUP_S seconds of warm-up calls: with 30
#: calls of a 0.1 ms case a single slow spell of the VM moved its median.
FULL = (3000, 20, 3, 1.0, 7)
QUICK = (5, 3, 1, 0.5, 3)
WARMUP_S = {"full": 0.3, "quick": 0.0}


def _csv(text: str, allowed, what: str) -> list:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what}: {','.join(bad) or 'nothing'} not in {','.join(allowed)}")
    return items


def _child_env(threads: int, extra=None) -> dict:
    """Environment of a worker: every thread pool the same size, the repo importable."""
    env = os.environ.copy()
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "PJRT_NPROC"):  # PJRT_NPROC: XLA's CPU pool
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra or {})
    return env


def _run_worker(args: list, json_path: Path, threads: int, timeout: float, extra_env=None, cwd=ROOT):
    """Run one worker; its result JSON (possibly partial after a crash or timeout) or None."""
    cmd = [sys.executable, "-m", "benchmarks.worker", *args, "--json", str(json_path), "--threads", str(threads)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=_child_env(threads, extra_env), timeout=timeout)
        if proc.returncode != 0:
            print(f"benchmarks: worker {' '.join(args[:2])} exited with {proc.returncode}", file=sys.stderr)
    except subprocess.TimeoutExpired:
        print(f"benchmarks: worker {' '.join(args[:2])} timed out after {timeout:.0f} s (partial results kept)", file=sys.stderr)
    data = None
    if json_path.exists():
        import json

        try:
            data = json.loads(json_path.read_text())
        except ValueError:
            data = None
    if data is not None:
        data["wall_s"] = time.perf_counter() - start
    return data


def _baseline_root(base: Path, tmp: Path) -> Path:
    """A directory whose ``fastgrad`` is the baseline's and whose ``benchmarks`` is ours.

    The worker runs with this as its working directory, which ``python -m`` puts
    first on sys.path: the baseline's package wins over the editable install.
    """
    root = tmp / "baseline-root"
    root.mkdir(exist_ok=True)
    for name, target in (("fastgrad", base / "fastgrad"), ("benchmarks", ROOT / "benchmarks")):
        link = root / name
        if not link.exists():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return root


def _git_commit(tree: Path) -> str:
    """The short commit of a source tree, with '+changes' when its work tree differs; '?' outside git."""
    try:
        rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=30)
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    if rev.returncode != 0:
        return "?"
    return rev.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _fastgrad_environment(threads: int) -> list:
    """fastgrad's own description of the machine (CPU, ISA, vector width, caches), from a child process."""
    code = "import fastgrad.config as c; print('\\n'.join(c.environment_lines()))"
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_child_env(threads), capture_output=True,
                              text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return []
    return proc.stdout.splitlines()[:2] if proc.returncode == 0 else []


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def parse_args(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # python -m fastgrad bench -- ARGS passes the separator on
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="fastgrad vs NumPy vs PyTorch CPU vs JAX CPU benchmarks")
    p.add_argument("--quick", action="store_true", help="S and M shapes, few repeats (~1-2 minutes); numbers are noisy")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every library (default: all cores)")
    p.add_argument("--ops", type=lambda s: _csv(s, OPS, "--ops"), default=list(OPS), help=f"comma list of {','.join(OPS)}")
    p.add_argument("--sizes", type=lambda s: _csv(s, ("S", "M", "L"), "--sizes"), default=None,
                   help="comma list of S,M,L (default S,M,L; --quick: S,M)")
    p.add_argument("--dtypes", type=lambda s: _csv(s, DTYPES, "--dtypes"), default=list(DTYPES))
    p.add_argument("--libs", type=lambda s: _csv(s, LIBS, "--libs"), default=list(LIBS))
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per library (default 3; --quick: 1)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="a source tree (e.g. a git worktree of an older commit) whose fastgrad is timed too, as 'before'")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per pass (upper bound)")
    p.add_argument("--budget", type=float, default=None, help="seconds per timed pass before stopping at min repeats")
    p.add_argument("--timeout", type=float, default=None, help="seconds per worker process (default 900 quick, 5400 full)")
    p.add_argument("--no-compile", action="store_true", help="skip the cold/warm compile-time probes")
    p.add_argument("--no-peak", action="store_true", help="skip the GEMM peak measurement")
    p.add_argument("--no-check", action="store_true", help="skip the correctness guard against the NumPy peer")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG chart")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default=None, help="output file stem (default latest; --quick: quick, never overwriting a full run)")
    p.add_argument("--update-readme", action="store_true", help="write the table into README.md between the bench markers")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.baseline is not None and not (args.baseline / "fastgrad" / "__init__.py").is_file():
        p.error(f"--baseline {args.baseline}: no fastgrad package there")
    if args.sizes is None:
        args.sizes = ["S", "M"] if args.quick else ["S", "M", "L"]
    if args.name is None:
        args.name = "quick" if args.quick else "latest"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    repeats, min_repeats, warmup, budget, gemm_repeats = QUICK if args.quick else FULL
    repeats = args.repeats or repeats
    min_repeats = min(min_repeats, repeats)
    budget = args.budget if args.budget is not None else budget
    timeout = args.timeout or (900.0 if args.quick else 5400.0)
    cases = all_cases(args.ops, args.sizes)
    if not cases:
        print("benchmarks: no case matches --ops/--sizes", file=sys.stderr)
        return 2
    if args.threads > (os.cpu_count() or 1):
        print(f"benchmarks: warning: --threads {args.threads} exceeds the {os.cpu_count()} cores", file=sys.stderr)

    data = {
        "meta": {
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "quick": args.quick,
            "threads": args.threads,
            "cores": os.cpu_count(),
            "cpu": _cpu_name(),
            "machine": platform.platform(),
            "python": platform.python_version(),
            "numpy": _version("numpy"),
            "numba": _version("numba"),
            "torch": _version("torch"),
            "jax": _version("jax"),
            "argv": list(argv) if argv is not None else sys.argv[1:],
            "rounds": args.rounds,
            "baseline": f"{args.baseline} ({_git_commit(args.baseline)})" if args.baseline else None,
            "commit": _git_commit(ROOT),
            "fastgrad_environment": _fastgrad_environment(args.threads),
            "repeats": repeats, "min_repeats": min_repeats, "warmup": warmup, "budget_s": budget,
            "cases": [c.id for c in cases], "dtypes": args.dtypes,
            # a busy machine makes every number noisy: the report prints these next to the results
            "loadavg_start": _loadavg(),
        },
        "peak": None,
        "compile": {},
        "libs": {},
        "rows": [],
    }
    timing = ["--warmup", str(warmup), "--repeats", str(repeats), "--min-repeats", str(min_repeats), "--budget", str(budget),
              "--warmup-s", str(WARMUP_S["quick" if args.quick else "full"])]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fastgrad-bench-") as tmp:
        tmp = Path(tmp)
        if not args.no_peak:
            print("== peak: NumPy GEMM", file=sys.stderr, flush=True)
            data["peak"] = _run_worker(["--peak", "--repeats", str(gemm_repeats), "--min-repeats", "2", "--budget", "2"],
                                       tmp / "peak.json", args.threads, timeout)
        # One op at a time, every library in turn (numpy first: its worker saves the
        # reference outputs the other workers' correctness guard loads), so each
        # ratio compares timings taken minutes apart at most, not a whole run apart:
        # this VM has slow spells that shifted a whole library's block by 20-40 %.
        (tmp / "ref").mkdir()
        ops = list(dict.fromkeys(c.op for c in cases))
        libs = sorted(args.libs, key=lambda name: name != "numpy")
        if args.baseline is not None:
            libs.append("before")
            before_env = {"FASTGRAD_CACHE_DIR": str(tmp / "cache-before")}
            before_cwd = _baseline_root(args.baseline, tmp)
        for op in ops:
            op_cases = [c for c in cases if c.op == op]
            for rnd in range(args.rounds):
                for lib in libs:
                    print(f"== {op}: {lib} (round {rnd + 1} of {args.rounds})", file=sys.stderr, flush=True)
                    worker_lib = "fastgrad" if lib == "before" else lib
                    cmd = ["--lib", worker_lib, "--cases", ",".join(c.id for c in op_cases), "--dtypes", ",".join(args.dtypes),
                           *timing]
                    # the correctness guard runs in the first round (it is the same every round)
                    check = not args.no_check and rnd == 0
                    cmd += ["--ref-dir", str(tmp / "ref")] if check else ["--no-check"]
                    extra = before_env if lib == "before" else None
                    cwd = before_cwd if lib == "before" else ROOT
                    res = _run_worker(cmd, tmp / f"{lib}-{op}-{rnd}.json", args.threads, timeout, extra, cwd)
                    entry = data["libs"].setdefault(lib, {"version": None, "error": None, "wall_s": 0.0})
                    if res is None:
                        entry["error"] = "worker produced no results"
                        continue
                    entry["version"] = entry["version"] or res.get("version")
                    entry["error"] = entry["error"] or res.get("error")
                    entry["wall_s"] += res.get("wall_s") or 0.0
                    for row in res.get("rows", []):
                        row["lib"] = lib
                        row["round"] = rnd
                    data["rows"] += res.get("rows", [])
        if not args.no_compile:
            cache = tmp / "cache"  # fresh: nothing compiled yet
            cache.mkdir()
            for mode in ("cold", "warm"):
                print(f"== compile: {mode} cache", file=sys.stderr, flush=True)
                data["compile"][mode] = _run_worker(["--compile", mode], tmp / f"compile_{mode}.json", args.threads, timeout,
                                                    {"FASTGRAD_CACHE_DIR": str(cache)})
            shutil.rmtree(cache, ignore_errors=True)
    data["meta"]["total_s"] = time.perf_counter() - start
    data["meta"]["loadavg_end"] = _loadavg()

    out_dir = args.out_dir
    report.write_json(data, out_dir / f"{args.name}.json")
    report.write_markdown(data, out_dir / f"{args.name}.md")
    written = [out_dir / f"{args.name}.json", out_dir / f"{args.name}.md"]
    if not args.no_plot:
        if report.write_png(data, out_dir / f"{args.name}.png"):
            written.append(out_dir / f"{args.name}.png")
        else:
            print("benchmarks: no PNG (matplotlib not installed or nothing to plot)", file=sys.stderr)
    print(report.markdown(data))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    if args.update_readme:
        from .update_readme import update_readme

        try:
            update_readme(ROOT / "README.md", report.readme_block(data))
            print("updated README.md bench block", file=sys.stderr)
        except (OSError, ValueError) as exc:
            print(f"benchmarks: README.md not updated: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
