"""Where fastgrad's compile time goes: per compiled function, numba's phases and LLVM.

``python -m benchmarks.compile_time`` runs a job in a fresh process with an empty
kernel cache and numba's event API listening, and prints one row per compiled
specialisation (a kernel twin or a helper, with its argument types):

* ``typing``: numba's type inference passes (the function's own statements;
  a helper typed on the way is charged to the helper, not to its caller);
* ``inline``: numba's inlining passes (``inline="always"`` and overloads);
* ``parfor``: the parallel passes (prange to a parallel loop, and its lowering's
  gufunc);
* ``lower``: lowering numba IR to LLVM IR, and every other numba pass;
* ``llvm``: time inside LLVM itself (optimising, code generation, linking the
  helpers' modules), measured as the time numba holds its LLVM lock;
* ``total``: the sum, exclusive of the nested compiles it triggered.

Attribution is exclusive: every instant of the job is charged to the innermost
compile in progress and to the innermost pass (or the LLVM lock) inside it.
What is charged to no compile (importing, cache loads, the job's own
arithmetic, Python) is the row ``outside any compile``.

Jobs (``--job``):

* ``main``: ``python -m fastgrad`` (the gradient-check table, then the digits MLP), with
  its background compile worker off (``FASTGRAD_COMPILE_AHEAD=0``), so one process
  compiles, and is profiled, everything;
* ``warmup32`` / ``warmup``: ``fastgrad.warmup(float32)`` / both dtypes, in one process
  (``jobs=1``), so every compile is seen;
* ``mlp-step``: import, build the digits MLP, one training step.

Examples::

    python -m benchmarks.compile_time                      # the main job
    python -m benchmarks.compile_time --job warmup32 --top 40
    python -m benchmarks.compile_time --job main --markdown
    python -m benchmarks.compile_time --job main --json compile.json

The child runs with ``FASTGRAD_CACHE_DIR`` set to a fresh temporary directory
(``--cache DIR`` to reuse one, e.g. to time a warm start).  The CPU is printed
with the table: compile time depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOBS = {
    "main": "from fastgrad.cli import main; main([])",
    "warmup32": "import fastgrad as fg; fg.warmup('float32', jobs=1)",
    "warmup": "import fastgrad as fg; fg.warmup(jobs=1)",
    "mlp-step": (
        "import numpy as np, fastgrad as fg\n"
        "from fastgrad.examples import mlp\n"
        "model = mlp.build()\n"
        "x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)\n"
        "y = np.arange(32) % 10\n"
        "model.train_step(x, y, fg.CrossEntropyLoss(), fg.Adam(model, 1e-3))\n"
    ),
}

PHASES = ("typing", "inline", "parfor", "lower", "llvm")


def _phase(pass_name: str) -> str:
    """The phase a numba compiler pass belongs to."""
    name = pass_name.lower()
    if "type_inference" in name or "typing" in name or "type_annotate" in name or name.startswith("nopython_type"):
        return "typing"
    if "inline" in name:
        return "inline"
    if "parfor" in name or "prange" in name:
        return "parfor"
    return "lower"


class Profiler:
    """Charges every instant to (innermost compile, phase); see the module docstring."""

    def __init__(self):
        self.stack = []  # compile keys, innermost last
        self.passes = []  # (depth, phase) of running passes
        self.llvm_depth = 0
        self.last = time.perf_counter()
        self.table = {}  # key -> {phase: seconds}
        self.outside = 0.0
        self.count = {}  # key -> number of compiles

    def _charge(self):
        now = time.perf_counter()
        spent = now - self.last
        self.last = now
        if not self.stack:
            self.outside += spent
            return
        key = self.stack[-1]
        if self.llvm_depth:
            phase = "llvm"
        elif self.passes and self.passes[-1][0] == len(self.stack):
            phase = self.passes[-1][1]
        else:
            phase = "lower"
        row = self.table.setdefault(key, dict.fromkeys(PHASES, 0.0))
        row[phase] += spent

    def install(self):
        from numba.core import event

        prof = self

        class Compile(event.Listener):
            def on_start(self, ev):
                prof._charge()
                disp = ev.data["dispatcher"]
                name = f"{disp.py_func.__module__.replace('fastgrad.kernels.', '')}.{disp.py_func.__qualname__}"
                args = ", ".join(str(a) for a in ev.data["args"])
                key = (name, args)
                prof.count[key] = prof.count.get(key, 0) + 1
                prof.stack.append(key)

            def on_end(self, ev):
                prof._charge()
                prof.stack.pop()

        class Pass(event.Listener):
            def on_start(self, ev):
                prof._charge()
                prof.passes.append((len(prof.stack), _phase(ev.data["name"])))

            def on_end(self, ev):
                prof._charge()
                prof.passes.pop()

        class Llvm(event.Listener):
            def on_start(self, ev):
                prof._charge()
                prof.llvm_depth += 1

            def on_end(self, ev):
                prof._charge()
                prof.llvm_depth -= 1

        event.register("numba:compile", Compile())
        event.register("numba:run_pass", Pass())
        event.register("numba:llvm_lock", Llvm())

    def result(self) -> dict:
        self._charge()
        rows = []
        for (name, args), phases in self.table.items():
            count = self.count.get((name, args), 0)
            rows.append({"function": name, "args": args, "compiles": count, **phases, "total": sum(phases.values())})
        rows.sort(key=lambda r: -r["total"])
        return {"rows": rows, "outside": self.outside}


def child(job: str, out: str) -> None:
    """Run ``job`` in this process with the profiler installed; write the result as JSON to ``out``."""
    prof = Profiler()
    prof.install()
    start = time.perf_counter()
    exec(compile(JOBS[job], f"<job {job}>", "exec"), {"__name__": "__job__"})
    wall = time.perf_counter() - start
    from fastgrad._jit import cpu_info

    result = prof.result()
    result.update(job=job, wall=wall, cpu=cpu_info()["model"], llvm_cpu=cpu_info()["llvm_cpu"])
    Path(out).write_text(json.dumps(result, indent=1))


def run(job: str, cache: str | None = None, quiet: bool = True) -> dict:
    """Profile ``job`` in a fresh process (empty cache unless ``cache``); returns the result dict."""
    with tempfile.TemporaryDirectory(prefix="fg-compile-") as tmp:
        # one process compiles everything, so every compile is seen (the main job's
        # background worker would take half of them out of sight)
        env = dict(os.environ, FASTGRAD_CACHE_DIR=cache or str(Path(tmp) / "cache"), FASTGRAD_COMPILE_AHEAD="0")
        out = str(Path(tmp) / "result.json")
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "benchmarks.compile_time", "--child", job, out],
            check=True, env=env, cwd=str(Path(__file__).resolve().parent.parent),
            stdout=subprocess.DEVNULL if quiet else None,
        )
        result = json.loads(Path(out).read_text())
        result["process_wall"] = time.perf_counter() - start
    return result


def summary(result: dict) -> dict:
    """Totals per phase and per kind (serial twin, parallel twin, helper)."""
    totals = dict.fromkeys(PHASES, 0.0)
    kinds = {"parallel twin": 0.0, "serial twin": 0.0, "helper or gufunc": 0.0}
    from fastgrad import _jit

    kernel_names = {k.name for k in _jit.KERNELS}
    for row in result["rows"]:
        for p in PHASES:
            totals[p] += row[p]
        name = row["function"]
        base = name.removesuffix("__serial")
        if base in kernel_names:
            kinds["serial twin" if name.endswith("__serial") else "parallel twin"] += row["total"]
        else:
            kinds["helper or gufunc"] += row["total"]
    return {"phases": totals, "kinds": kinds, "specialisations": len(result["rows"])}


def format_text(result: dict, top: int = 25) -> str:
    s = summary(result)
    lines = [
        f"job {result['job']}: {result['process_wall']:.1f} s wall (process), {result['wall']:.1f} s in the job; "
        f"CPU {result['cpu']} (LLVM {result['llvm_cpu']})",
        f"{s['specialisations']} compiled specialisations; " + ", ".join(f"{k} {v:.1f} s" for k, v in s["kinds"].items()),
        "phases: " + ", ".join(f"{p} {s['phases'][p]:.1f} s" for p in PHASES) + f"; outside any compile {result['outside']:.1f} s",
        "",
        f"{'function':<44}{'args':<30}" + "".join(f"{p:>8}" for p in PHASES) + f"{'total':>8}",
    ]
    for row in result["rows"][:top]:
        args = row["args"] if len(row["args"]) <= 28 else row["args"][:25] + "..."
        lines.append(f"{row['function'][:43]:<44}{args:<30}" + "".join(f"{row[p]:8.2f}" for p in PHASES) + f"{row['total']:8.2f}")
    if len(result["rows"]) > top:
        rest = sum(r["total"] for r in result["rows"][top:])
        lines.append(f"... {len(result['rows']) - top} more, {rest:.2f} s")
    return "\n".join(lines)


def format_markdown(result: dict, top: int = 12) -> str:
    s = summary(result)
    lines = [
        f"`{result['job']}` from an empty cache on {result['cpu']}: {result['process_wall']:.1f} s; "
        f"{s['specialisations']} compiled specialisations; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in s["kinds"].items()) + "; "
        + ", ".join(f"{p} {s['phases'][p]:.1f} s" for p in PHASES) + ".",
        "",
        "| function | " + " | ".join(PHASES) + " | total s |",
        "|---|" + "---:|" * (len(PHASES) + 1),
    ]
    for row in result["rows"][:top]:
        lines.append(f"| `{row['function']}` | " + " | ".join(f"{row[p]:.2f}" for p in PHASES) + f" | {row['total']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_time", description=__doc__.split("\n")[0])
    parser.add_argument("--job", default="main", choices=sorted(JOBS))
    parser.add_argument("--cache", default=None, help="kernel cache directory (default: a fresh empty one)")
    parser.add_argument("--top", type=int, default=25, help="rows to show")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--show-output", action="store_true", help="let the job print")
    args = parser.parse_args(argv)
    result = run(args.job, args.cache, quiet=not args.show_output)
    print(format_markdown(result, args.top) if args.markdown else format_text(result, args.top))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
