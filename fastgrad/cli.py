"""``python -m fastgrad``: gradient-check every layer type, then train on real data.

Subcommands::

    python -m fastgrad                 the main job: check + train the digits MLP
    python -m fastgrad check           gradient-check table (worst error per layer type)
    python -m fastgrad train [MODEL]   train mlp (default), cnn, lstm or charlm on offline data
    python -m fastgrad info            versions, threads, threading layer, cache
    python -m fastgrad explain OP      the cheat sheet's equations of OP (dense, conv, pool, lstm,
                                       softmax, or module:Class for your own layer), the kernel
                                       lines under each (path:line), then a gradient check
    python -m fastgrad bench [ARGS]    the benchmark suite (python -m benchmarks ARGS)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def run_checks(out=None) -> bool:
    """Print the table of worst errors (to ``out``, default sys.stdout at the call); True when every layer passes."""
    import fastgrad as fg

    out = sys.stdout if out is None else out

    from .cases import LAYER_CASES

    print(f"{'layer':<24}{'tensors':>8}{'points':>8}{'max abs err':>14}{'max rel err':>14}  result", file=out)
    all_ok = True
    for case in LAYER_CASES:
        label = case.label
        report = fg.gradcheck(case.layer(np.float64), case.input(), raise_on_failure=False)
        points = sum(r.checked for r in report.rows)
        ok = report.ok
        all_ok &= ok
        errs = f"{report.max_abs_err:>14.2e}{report.max_rel_err:>14.2e}"
        print(f"{label:<24}{len(report.rows):>8}{points:>8}{errs}  {'pass' if ok else 'FAIL'}", file=out)
    print(f"gradient check: {'all layers pass' if all_ok else 'FAILURES above'} (eps 1e-6, atol 1e-5, rtol 1e-3, float64)", file=out)
    return all_ok


def _train(name, epochs, progress):
    from importlib import import_module

    modules = {"mlp": "mlp", "cnn": "cnn", "lstm": "lstm_digits", "charlm": "charlm"}
    module = import_module(f"fastgrad.examples.{modules[name]}")
    kwargs = {"progress": progress}
    if epochs is not None:
        kwargs["epochs"] = epochs
    print(f"training {name} ...", flush=True)
    start = time.perf_counter()
    result = module.train(**kwargs)
    total = time.perf_counter() - start
    if "test_accuracy" in result:
        print(f"test accuracy: {result['test_accuracy']:.3f}")
    if "samples" in result:
        print("sampled text:\n" + str(result["samples"]))
    print(f"time per epoch: {result['seconds_per_epoch']:.3f} s (total {total:.1f} s incl. compile)")
    return result


#: Every compiled task of the main job (kernel, dtype, twin; "stack": the fused step of the
#: digits MLP), in the order the job first needs them: the float64 serial twins of the
#: gradient-check table, then the float32 training of the digits MLP.  A background worker
#: compiles them from the end while the job compiles from the start (config.CompileAhead).
#: tests/test_compile_ahead.py checks the list against what the job really compiles.
MAIN_JOB_TASKS = tuple(
    [(name, "float64", "serial") for name in (
        "util.all_finite", "dense.dense_forward", "dense.dense_backward", "activations.activation_dz",
        "activations.activation_forward", "activations.activation_backward", "softmax.softmax_forward",
        "softmax.softmax_backward", "softmax.log_softmax_forward", "softmax.log_softmax_backward",
        "conv_im2col.conv_forward_im2col", "conv_im2col.conv_backward_im2col", "pool.max_pool_forward",
        "pool.max_pool_backward", "pool.avg_pool_forward", "pool.avg_pool_backward", "lstm.lstm_forward",
        "lstm.lstm_backward", "embedding.embedding_forward", "embedding.embedding_backward",
        "norm.layer_norm_forward", "norm.layer_norm_backward", "norm.batch_norm_forward", "norm.batch_norm_backward",
    )]
    + [
        ("util.all_finite", "float32", "parallel"), ("util.all_finite", "float32", "serial"),
        ("dense.dense_forward", "float32", "serial"), ("softmax.cross_entropy_labels", "float32", "serial"),
        ("activations.activation_dz", "float32", "serial"), ("dense.dense_backward", "float32", "serial"),
        ("examples.mlp", "float32", "stack"), ("optim.adam_update", "float32", "serial"),
        ("dense.dense_forward", "float32", "parallel"), ("softmax.cross_entropy_labels", "float32", "parallel"),
    ]
)


_BENCH_NEEDS_SOURCE = (
    "fastgrad bench: the benchmark suite is not installed with the package; in a clone of the fastgrad "
    "source tree run: pip install -e '.[bench]' && python -m benchmarks"
)


def _bench(args) -> int:
    """Run the source tree's benchmark runner, or exit 2 with one line saying how."""
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec("benchmarks")
    except (ImportError, ValueError):
        spec = None
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    # only fastgrad's own runner: a source tree where benchmarks/ sits beside fastgrad/
    if origin is None or not (origin.parent / "cases.py").exists() or not (origin.parent.parent / "fastgrad").is_dir():
        print(_BENCH_NEEDS_SOURCE, file=sys.stderr)
        return 2
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError as exc:
        print(f"fastgrad bench: {exc}; install the benchmark extras with pip install -e '.[bench]'", file=sys.stderr)
        return 2
    return bench_main(args)


def _explain(args) -> int:
    """Print the explanation; 1 when a gradient check fails, 2 (one line on stderr) for a request explain cannot serve."""
    from .explain import ExplainError, explanation

    try:
        result = explanation(args.op, check=not args.no_check, args=args.args, input_shape=args.input_shape)
    except ExplainError as exc:
        print(f"python -m fastgrad {exc}", file=sys.stderr)
        return 2
    print(result.text)
    return 0 if result.ok else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # everything after "bench" belongs to the benchmark runner (argparse's
        # REMAINDER would refuse options such as --quick)
        return _bench(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m fastgrad", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("check", help="gradient-check every layer type")
    train = sub.add_parser("train", help="train an example model on offline data")
    train.add_argument("model", nargs="?", default="mlp", choices=["mlp", "cnn", "lstm", "charlm"])
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("info", help="show versions and configuration")
    explain = sub.add_parser(
        "explain",
        help="an op's equations, the kernel lines that implement them, a gradient check",
        description="The cheat sheet's equations of OP, under each the kernel path:line and the lines that "
        "implement it (read from the source), then the gradient-check table of a tiny float64 instance.",
    )
    explain.add_argument("op", help="dense, conv, pool, lstm, softmax, or module:Class for your own fg.Layer subclass")
    explain.add_argument("--args", default=None, help="module:Class only: constructor arguments as a JSON object, e.g. '{\"n\": 8}'")
    explain.add_argument("--input-shape", default=None, help="module:Class only: shape of the random input of the check, e.g. 4,8")
    explain.add_argument("--no-check", action="store_true", help="skip the gradient check (nothing is compiled)")
    sub.add_parser("bench", help="run the benchmarks (python -m benchmarks ARGS)")
    args = parser.parse_args(argv)

    if args.command == "info":
        from .config import show_config

        show_config()
        return 0
    if args.command == "explain":
        return _explain(args)
    if args.command == "check":
        return 0 if run_checks() else 1
    if args.command == "train":
        _train(args.model, args.epochs, not args.quiet)
        return 0
    # the main job
    from .config import CompileAhead, config_text

    ahead = CompileAhead(MAIN_JOB_TASKS, marker="main-job")
    try:
        print(config_text(), end="\n\n")
        if ahead.started:
            print("first run: compiling the kernels this job uses (a worker process compiles the last ones meanwhile)\n", flush=True)
        ok = run_checks()
        print()
        _train("mlp", None, True)
    except BaseException:
        ahead.close()  # no marker: the job did not get through every kernel it uses
        raise
    ahead.close(finished=True)
    return 0 if ok else 1
