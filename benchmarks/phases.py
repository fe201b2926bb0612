"""What the phase benchmarks (lstm_phases, product_threads) share: timing, interleaved rounds, the command line, a table."""

import statistics
import time


def median_call(fn, min_time=0.05, max_calls=200):
    """The median seconds of repeated calls of fn (after one untimed call): at least 5, until min_time or max_calls."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < 5 or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def render(head, rows, markdown):
    """The rows under head as a markdown table (two label columns, the rest right-aligned) or aligned plain text."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def parse_args(prog, description, shapes, argv=None):
    """The phase benchmarks' command line: --rounds, --dtype, --threads, --shapes (names of ``shapes``), --markdown."""
    import argparse

    import numba

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--shapes", default=",".join(shapes))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in args.shapes if s not in shapes]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(shapes)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def interleaved(calls, threads, rounds):
    """{(shape name, thread count): {phase: median seconds}} for calls = {shape name: {phase: fn}}.

    Every round times every phase of every shape at ``threads`` and then at 1
    thread, so a slow spell of a shared machine hits one round of each instead
    of all of one; the result is the median of the rounds' medians.
    """
    import numba

    samples = {}
    for r in range(rounds):
        for nt in sorted({threads, 1}, reverse=True):
            numba.set_num_threads(nt)
            for name, phases in calls.items():
                for phase, fn in phases.items():
                    samples.setdefault((name, nt), {}).setdefault(phase, []).append(median_call(fn))
        print(f"round {r + 1}/{rounds} done", flush=True)
    numba.set_num_threads(threads)
    return {key: {phase: statistics.median(v) for phase, v in phases.items()} for key, phases in samples.items()}
