"""Turn the merged worker results into the JSON file, the Markdown table and the PNG chart.

Definitions used in every output:

* time: median of the timed calls in ms, with min-max; warmup calls excluded;
* GFLOP/s: ``cases.flops`` (2 FLOPs per multiply-add) / median time;
* ratio ``xPEER``: PEER median / fastgrad median, so > 1 means fastgrad is faster;
* % peak: fastgrad GFLOP/s / the NumPy GEMM GFLOP/s (best of its calls) of the same
  dtype, measured in the same run in its own process;
* target: the targets of issues 13 and 14 from ``cases.targets``, "met" / "not met" / "n/a";
* rounds: a full run times every library ``--rounds`` times, interleaved (numpy,
  fastgrad, torch, jax, numpy, fastgrad, torch, jax, ...), and reports the median of the
  per-round medians, with min-max over every call of every round;
* before: with ``--baseline DIR`` the fastgrad of another source tree (an older
  commit) is timed in the same rounds, so ``x before`` = its time / today's.

Nothing here imports matplotlib unless the PNG is asked for (and then only with Agg).
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from .cases import COMPILE_TARGETS, SHAPE_NAMES, targets

#: in column order; "before" (with --baseline) comes right after the torch columns
PEERS = ("numpy", "torch", "before", "jax")
COLUMNS = (
    "case", "shape", "dtype", "pass", "fastgrad ms", "min-max ms", "GFLOP/s", "% peak",
    "numpy ms", "x numpy", "torch ms", "x torch", "jax ms", "x jax", "check", "targets",
)
#: the two columns of a run with --baseline, after "x torch"
BEFORE_COLUMNS = ("before ms", "x before")


def _has_before(data: dict) -> bool:
    return any(r.get("lib") == "before" for r in data.get("rows", []))


def columns(data: dict) -> tuple:
    """The table's header: COLUMNS, with the before columns when the run had a baseline."""
    if not _has_before(data):
        return COLUMNS
    at = COLUMNS.index("x torch") + 1
    return COLUMNS[:at] + BEFORE_COLUMNS + COLUMNS[at:]


def merge_rounds(rows: list) -> list:
    """One row per (lib, case, dtype, pass): the median of the rounds' medians.

    A key that failed in any round keeps that round's row (its error is the
    result); the correctness check is the one round that ran it.
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["lib"], r["case"], r["dtype"], r["pass"]), []).append(r)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        bad = [r for r in group if r.get("status") != "ok"]
        if bad:
            out.append(bad[0])
            continue
        med = statistics.median(r["median_ms"] for r in group)
        work = group[0]["gflops"] * group[0]["median_ms"]  # GFLOP/s x ms: the case's work, the same every round
        checks = [r["check"] for r in group if (r.get("check") or {}).get("status") not in (None, "skipped")]
        merged = dict(group[0])
        merged.update(
            median_ms=med,
            min_ms=min(r["min_ms"] for r in group),
            max_ms=max(r["max_ms"] for r in group),
            gflops=work / med,
            calls=sum(r.get("calls", 0) for r in group),
            rounds_ms=[r["median_ms"] for r in group],
            check=checks[0] if checks else group[0].get("check"),
        )
        out.append(merged)
    return out


def _fmt_ms(v) -> str:
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_ratio(v) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _index(rows: list) -> dict:
    return {(r["lib"], r["case"], r["dtype"], r["pass"]): r for r in rows}


def _status_text(row) -> str | None:
    """None for a timed row, else what to print instead of a time ("n/a", "error", "missing")."""
    if row is None:
        return "missing"
    if row.get("status") == "ok":
        return None
    return "n/a" if row.get("status") == "n/a" else "error"


def combine(data: dict) -> list:
    """One dict per (case, dtype, pass), in run order, with fastgrad's numbers, ratios, checks and targets."""
    idx = _index(merge_rounds(data.get("rows", [])))
    peers = [p for p in PEERS if p != "before" or _has_before(data)]
    peak = data.get("peak") or {}
    keys = []
    for r in data.get("rows", []):
        key = (r["case"], r["dtype"], r["pass"])
        if key not in keys:
            keys.append(key)
    out = []
    for case, dtype, pass_ in keys:
        fg = idx.get(("fastgrad", case, dtype, pass_))
        any_row = fg or next(r for r in data["rows"] if (r["case"], r["dtype"], r["pass"]) == (case, dtype, pass_))
        row = {
            "case": case, "op": any_row["op"], "size": any_row["size"], "shape": any_row["shape"], "dtype": dtype, "pass": pass_,
            "fastgrad": _status_text(fg), "median_ms": None, "min_ms": None, "max_ms": None, "gflops": None, "pct_peak": None,
            "peers": {}, "checks": {}, "targets": [],
        }
        if row["fastgrad"] is None:
            row.update(median_ms=fg["median_ms"], min_ms=fg["min_ms"], max_ms=fg["max_ms"], gflops=fg["gflops"])
            best = (peak.get(dtype) or {}).get("best_gflops")
            if best:
                row["pct_peak"] = 100.0 * fg["gflops"] / best
        for lib in ["fastgrad"] + peers:
            r = idx.get((lib, case, dtype, pass_))
            if r is not None and r.get("status") == "ok":
                row["checks"][lib] = r.get("check", {})
        for peer in peers:
            r = idx.get((peer, case, dtype, pass_))
            med = r["median_ms"] if r is not None and r.get("status") == "ok" else None
            ratio = med / row["median_ms"] if med is not None and row["median_ms"] else None
            status = _status_text(r) if peer in data.get("libs", {}) or r is not None else "not run"
            if r is None and str((data.get("libs", {}).get(peer) or {}).get("error") or "").startswith("n/a"):
                status = "n/a"  # the library is not installed: its worker wrote no rows
            row["peers"][peer] = {"status": status, "median_ms": med, "ratio": ratio}
        for kind, peer, thr in targets(row["op"], row["size"], pass_, dtype):
            if kind == "ratio":
                value = row["peers"][peer]["ratio"]
                label = f"{peer} >= {thr:g}x"
            else:
                value = row["pct_peak"]
                label = f">= {thr:g}% peak"
            met = None if value is None else value >= thr
            row["targets"].append({"label": label, "value": value, "threshold": thr, "met": met})
        out.append(row)
    return out


def _check_text(row) -> str:
    bad = []
    for lib, chk in row["checks"].items():
        status = chk.get("status", "?")
        if status not in ("ok", "reference"):
            err = chk.get("max_rel_err")
            bad.append(f"{lib} {status}" + (f" {err:.1e}" if isinstance(err, float) else ""))
    return "; ".join(bad) if bad else ("ok" if row["checks"] else "-")


def _target_text(row) -> str:
    parts = []
    for t in row["targets"]:
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        parts.append(f"{t['label']}: {verdict}")
    return "; ".join(parts) if parts else "-"


def compile_rows(data: dict) -> list:
    """(label, seconds or None, target seconds, met or None) for the cold and warm compile probes."""
    comp = data.get("compile") or {}
    rows = []
    labels = {
        "cold": "cold cache: import + compile every kernel (fastgrad.warmup, float32)",
        "warm": "warm cache: import + build + first training step of the digits MLP",
    }
    for mode in ("cold", "warm"):
        sec = (comp.get(mode) or {}).get("total_s")
        thr = COMPILE_TARGETS[mode]
        rows.append((labels[mode], sec, thr, None if sec is None else sec <= thr))
    return rows


def table_markdown(data: dict) -> str:
    """The main table (also the README block)."""
    cols = columns(data)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(cols) - 6) + ["---"] * 2) + "|"]
    for row in combine(data):
        shape = "x".join(str(s) for s in row["shape"])
        dt = {"float32": "f32", "float64": "f64"}.get(row["dtype"], row["dtype"])
        if row["fastgrad"] is None:
            fg_cells = [
                _fmt_ms(row["median_ms"]),
                f"{_fmt_ms(row['min_ms'])}-{_fmt_ms(row['max_ms'])}",
                f"{row['gflops']:.2f}",
                "n/a" if row["pct_peak"] is None else f"{row['pct_peak']:.0f}%",
            ]
        else:
            fg_cells = [row["fastgrad"]] * 4
        peer_cells = []
        for peer in PEERS:
            if peer not in row["peers"]:
                continue
            p = row["peers"][peer]
            peer_cells += [p["status"] or _fmt_ms(p["median_ms"]), _fmt_ratio(p["ratio"])]
        cells = [row["case"], shape, dt, row["pass"], *fg_cells, *peer_cells, _check_text(row), _target_text(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(data: dict) -> str:
    """Peak, compile times and the count of targets met, under the table."""
    meta = data.get("meta", {})
    peak = data.get("peak") or {}
    lines = []
    if peak.get("float32"):
        lines.append(
            f"Peak (NumPy GEMM {peak['n']}^3, BLAS {peak.get('blas', '?')}, {peak.get('threads', '?')} threads, best call): "
            f"float32 {peak['float32']['best_gflops']:.1f} GFLOP/s, float64 {peak['float64']['best_gflops']:.1f} GFLOP/s."
        )
    else:
        lines.append("Peak: not measured (% peak is n/a).")
    lines += ["", "| compile time | seconds | target | met |", "|---|---:|---:|---|"]
    for label, sec, thr, met in compile_rows(data):
        verdict = "n/a" if met is None else ("met" if met else "NOT met")
        lines.append(f"| {label} | {'n/a' if sec is None else f'{sec:.2f}'} | <= {thr:g} s | {verdict} |")
    met = n = 0
    for row in combine(data):
        for t in row["targets"]:
            if t["met"] is not None:
                n += 1
                met += bool(t["met"])
    for _, _, _, ok in compile_rows(data):
        if ok is not None:
            n += 1
            met += bool(ok)
    lines += ["", f"Targets met: {met} of {n} evaluated (targets against a missing peer are n/a)."]
    libs = data.get("libs", {})
    versions = ", ".join(f"{lib} {info.get('version') or 'n/a'}" for lib, info in libs.items())
    load = meta.get("loadavg_start")
    threads = meta.get("threads") or 1
    if load and load[0] > 0.5 * threads:
        lines.append(
            f"WARNING: the machine was busy (1-minute load average {load[0]:.1f} at the start, "
            f"{(meta.get('loadavg_end') or ['?'])[0]} at the end, for {threads} threads): the timings are noisy."
        )
    rounds = meta.get("rounds") or 1
    before = meta.get("baseline")
    lines.append(
        f"{rounds} interleaved round{'s' if rounds > 1 else ''} per library"
        + (f"; 'before' is the fastgrad of {before}" if before else "") + "."
    )
    for env_line in meta.get("fastgrad_environment") or []:
        lines.append(f"fastgrad sees {env_line}.")
    lines.append(
        f"Run {meta.get('date', '?')} on {meta.get('cpu', '?')} ({meta.get('cores', '?')} cores), {meta.get('threads', '?')} threads"
        f"{', QUICK run (noisy)' if meta.get('quick') else ''}; fastgrad commit {meta.get('commit', '?')}; {versions}; "
        f"python {meta.get('python', '?')}."
    )
    return "\n".join(lines)


def legend_markdown() -> str:
    shapes = "; ".join(f"{op}: ({names})" for op, names in SHAPE_NAMES.items())
    return (
        "fastgrad ms: median (min-max) of the timed calls; x PEER = PEER time / fastgrad time (> 1: fastgrad faster); "
        "% peak = fastgrad GFLOP/s / NumPy GEMM GFLOP/s of the same dtype; GFLOP/s counts 2 FLOPs per multiply-add "
        "(softmax: 4 per element forward, 8 forward+backward); check = outputs (fwd) and gradients (fwd+bwd; "
        "training steps: loss and updated parameters) equal to the NumPy peer's within 2e-3 (f32) / 1e-8 (f64) "
        f"relative to the largest value. Shapes: {shapes}. Training steps: batch 32, plain SGD, "
        "fwd = model forward only, fwd+bwd = zero_grad, forward, loss, backward, step."
    )


def markdown(data: dict) -> str:
    meta = data.get("meta", {})
    title = "# fastgrad benchmarks" + (" (QUICK run: noisy, S/M shapes only)" if meta.get("quick") else "")
    return "\n\n".join([title, table_markdown(data), legend_markdown(), summary_markdown(data)]) + "\n"


def readme_block(data: dict) -> str:
    """What goes between the README's bench markers (generated, never typed by hand)."""
    return "\n\n".join([table_markdown(data), legend_markdown(), summary_markdown(data)])


def write_json(data: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def write_markdown(data: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(data))


def write_png(data: dict, path) -> bool:
    """Horizontal bars of fastgrad's ratio to each peer per row (log scale); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    peers = [p for p in PEERS if p != "before" or _has_before(data)]
    rows = [r for r in combine(data) if any(r["peers"][p]["ratio"] for p in peers)]
    if not rows:
        return False
    labels = [f"{r['case']} {r['dtype'].replace('float', 'f')} {r['pass']}" for r in rows]
    height = 0.8 / len(peers)
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.32 * len(rows)))
    ys = range(len(rows))
    colors = {"numpy": "#4c72b0", "torch": "#dd8452", "before": "#55a868", "jax": "#8172b3"}
    for k, peer in enumerate(peers):
        vals = [r["peers"][peer]["ratio"] or 0.0 for r in rows]
        if not any(vals):
            continue
        pos = [y + (k - 0.5 * (len(peers) - 1)) * height for y in ys]
        ax.barh(pos, vals, height=height, color=colors[peer], label=f"vs {peer} (peer time / fastgrad time)")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (> 1: fastgrad faster), log scale")
    meta = data.get("meta", {})
    title = f"fastgrad vs peers, {meta.get('threads', '?')} threads, {meta.get('date', '')[:10]}"
    ax.set_title(title + (" (QUICK, noisy)" if meta.get("quick") else ""))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
