"""``python -m fastgrad``: gradient-check every layer type, then train on real data.

Subcommands::

    python -m fastgrad                 the main job: check + train the digits MLP
    python -m fastgrad check           gradient-check table (worst error per layer type)
    python -m fastgrad train [MODEL]   train mlp (default), cnn, lstm or charlm on offline data
    python -m fastgrad info            versions, threads, threading layer, cache
    python -m fastgrad bench [ARGS]    the benchmark suite (python -m benchmarks ARGS)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _rng_x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def check_cases():
    """(label, layer, input) for each layer type: small float64 problems away from kinks."""
    import fastgrad as fg

    cases = []
    for act in fg.ACTIVATIONS:
        cases.append((f"Dense[{act}]", fg.Dense(5, 4, act, dtype=np.float64, seed=1), _rng_x((3, 5))))
    cases += [
        ("Dense[no bias]", fg.Dense(5, 4, bias=False, dtype=np.float64, seed=2), _rng_x((3, 5))),
        ("Activation[gelu]", fg.Activation("gelu"), _rng_x((3, 4))),
        ("Softmax", fg.Softmax(), _rng_x((3, 6))),
        ("Softmax[axis=0]", fg.Softmax(axis=0), _rng_x((4, 3))),
        ("LogSoftmax", fg.LogSoftmax(), _rng_x((3, 6))),
        ("Flatten", fg.Flatten(), _rng_x((2, 3, 2))),
        ("Conv1D[stride 2, same]", fg.Conv1D(2, 3, 3, stride=2, padding="same", activation="tanh", dtype=np.float64, seed=6),
         _rng_x((2, 2, 7))),
        ("Conv2D[dilation, groups]", fg.Conv2D(4, 4, 3, padding=1, dilation=2, groups=2, activation="elu", dtype=np.float64, seed=7),
         _rng_x((2, 4, 6, 5))),
        ("Conv2D[untied bias]", fg.Conv2D(2, 3, (2, 3), stride=(1, 2), bias="untied", input_size=(5, 6), dtype=np.float64, seed=8),
         _rng_x((2, 2, 5, 6))),
        ("MaxPool2D", fg.MaxPool2D(2), _rng_x((2, 3, 4, 4))),
        ("AvgPool1D[pad]", fg.AvgPool1D(3, stride=2, padding=1), _rng_x((2, 3, 7))),
        (
            "Sequential[CNN]",
            fg.Sequential(
                fg.Conv2D(1, 3, 3, padding="same", activation="relu", dtype=np.float64, seed=9),
                fg.MaxPool2D(2),
                fg.Flatten(),
                fg.Dense(12, 4, dtype=np.float64, seed=10),
            ),
            _rng_x((2, 1, 4, 4)) + 0.05,
        ),
        ("LSTM", fg.LSTM(3, 4, dtype=np.float64, seed=11), _rng_x((5, 2, 3))),
        ("LSTM[2 layers, bidir]", fg.LSTM(3, 3, num_layers=2, bidirectional=True, dtype=np.float64, seed=12), _rng_x((4, 2, 3))),
        (
            "LSTM[gelu gates, last h]",
            fg.LSTM(3, 4, return_sequences=False, activations={"n": "gelu", "h": "softplus"}, dtype=np.float64, seed=13),
            _rng_x((6, 2, 3)),
        ),
        ("Dense[N-D input]", fg.Dense(4, 3, "gelu_erf", dtype=np.float64, seed=14), _rng_x((2, 3, 4))),
        ("Embedding", fg.Embedding(6, 3, dtype=np.float64, seed=15), np.array([[0, 5, 5], [2, 1, 0]])),
        ("Dropout[eval]", fg.Dropout(0.5).eval(), _rng_x((3, 4))),
        ("LayerNorm", _shifted_affine(fg.LayerNorm((2, 3), dtype=np.float64)), _rng_x((2, 2, 3))),
        ("BatchNorm1D[train]", _shifted_affine(fg.BatchNorm1D(3, dtype=np.float64)), _rng_x((4, 3, 2))),
        ("BatchNorm2D[eval]", _shifted_affine(fg.BatchNorm2D(2, dtype=np.float64)).eval(), _rng_x((2, 2, 3, 3))),
        (
            "Sequential[MLP]",
            fg.Sequential(
                fg.Dense(6, 8, "tanh", dtype=np.float64, seed=3),
                fg.Dense(8, 5, "silu", dtype=np.float64, seed=4),
                fg.Dense(5, 3, dtype=np.float64, seed=5),
                fg.Softmax(),
            ),
            _rng_x((4, 6)),
        ),
    ]
    return cases


def _shifted_affine(layer):
    """A norm layer with gamma, beta away from (1, 0), so an error in either gradient shows."""
    rng = np.random.default_rng(16)
    layer.params["gamma"][...] = 1 + 0.5 * rng.standard_normal(layer.params["gamma"].shape)
    layer.params["beta"][...] = rng.standard_normal(layer.params["beta"].shape)
    return layer


def run_checks(out=sys.stdout) -> bool:
    """Print the table of worst errors; True when every layer passes."""
    import fastgrad as fg

    print(f"{'layer':<24}{'tensors':>8}{'points':>8}{'max abs err':>14}{'max rel err':>14}  result", file=out)
    all_ok = True
    for label, layer, x in check_cases():
        report = fg.gradcheck(layer, x, raise_on_failure=False)
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
    sub.add_parser("bench", help="run the benchmarks (python -m benchmarks ARGS)")
    args = parser.parse_args(argv)

    if args.command == "info":
        from .config import show_config

        show_config()
        return 0
    if args.command == "check":
        return 0 if run_checks() else 1
    if args.command == "train":
        _train(args.model, args.epochs, not args.quiet)
        return 0
    # the main job
    from .config import config_text

    print(config_text(), end="\n\n")
    ok = run_checks()
    print()
    _train("mlp", None, True)
    return 0 if ok else 1
