"""fg.warmup compiles every kernel from the registry: afterwards no public op compiles anything.

Runs in subprocesses with their own empty kernel cache: one warms up float32,
the next calls every public functional op along every code path (stride 1 and
2, dilation, groups, 1-D and 2-D, pooling, LSTM with lengths and state,
softmax on a non-last axis, ...), once on the serial and once on the parallel
twins, and the cache directory must not gain a single file.
"""

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import background

ROOT = Path(__file__).resolve().parents[1]

WARM = "import fastgrad as fg; fg.warmup(dtypes=('float32',))"

EVERY_PATH = textwrap.dedent(
    """
    import numpy as np
    import fastgrad as fg
    import fastgrad.functional as F
    from fastgrad import _jit

    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def dense():
        for N, n, m in ((3, 5, 4), (256, 512, 384)):  # the large one takes the transposed (dot) form
            for b in (r(m), None):
                for act in ("identity", "tanh"):
                    y, cache = F.dense_forward(r(N, n), r(m, n), b, act)
                    F.dense_backward(r(*y.shape), cache)

    def activation():
        for act in ("gelu", "gelu_erf"):
            y, cache = F.activation_forward(r(3, 4, 5), act)
            F.activation_backward(r(3, 4, 5), cache)

    def softmax():
        for x, axis in ((r(4, 7), -1), (r(3, 4, 5), 0), (r(3, 4, 5), 1)):
            y = F.softmax(x, axis)
            F.softmax_backward(r(*x.shape), y, axis)
            out = F.log_softmax(x, axis)
            F.log_softmax_backward(r(*x.shape), out, axis)
        for reduction in ("mean", "sum"):
            F.cross_entropy(r(6, 5), np.array([0, 1, 2, 3, 4, 0]), reduction=reduction)
            F.cross_entropy(r(6, 5), F.softmax(r(6, 5)), reduction=reduction)

    def conv():
        options = [
            dict(),
            dict(stride=2),
            dict(stride=(2, 1), padding="same"),
            dict(padding=1, dilation=2),
            dict(padding="same", groups=2, activation="relu"),
            dict(stride=2, dilation=(1, 2), groups=2, activation="tanh"),
        ]
        for opts in options:
            for nd in (1, 2):
                x = r(2, 4, *(9,) * nd)
                K = r(4, 4 // opts.get("groups", 1), *(3,) * nd)
                out_spatial = F.conv_forward(x, K, None, **_nd(opts, nd))[0].shape[2:]
                for bias in (r(4), r(4, *out_spatial), None):  # tied, untied (bias maps), none
                    y, cache = F.conv_forward(x, K, bias, **_nd(opts, nd))
                    F.conv_backward(r(*y.shape), cache)

    def _nd(opts, nd):
        out = {}
        for key, value in opts.items():
            out[key] = value[:nd] if isinstance(value, tuple) else value
        return out

    def pool():
        for nd in (1, 2):
            x = r(2, 3, *(7,) * nd)
            for fwd, bwd in ((F.max_pool_forward, F.max_pool_backward), (F.avg_pool_forward, F.avg_pool_backward)):
                for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)):
                    y, cache = fwd(x, **kwargs)
                    bwd(r(*y.shape), cache)

    def lstm():
        T, N, I, H = 5, 6, 3, 4
        W, b = r(4, H, H + I), r(4, H)
        for kwargs in (dict(), dict(h0=r(N, H), c0=r(N, H), lengths=np.array([5, 1, 3, 5, 2, 4]))):
            (y, (hT, cT)), cache = F.lstm_forward(r(T, N, I), W, b, activations={"n": "gelu"}, **kwargs)
            F.lstm_backward(r(T, N, H), cache)
            F.lstm_backward(None, cache, dhT=r(N, H), dcT=r(N, H))

    def embedding():
        W = r(7, 3)
        for pad in (None, 2):
            y, cache = F.embedding_forward(np.array([[1, 2], [2, 6]]), W, pad)
            F.embedding_backward(r(*y.shape), cache)

    def norm():
        x = r(4, 3, 5)
        for affine in (True, False):
            g, b = (r(5), r(5)) if affine else (None, None)
            y, cache = F.layer_norm_forward(x, 5, g, b)
            F.layer_norm_backward(r(*x.shape), cache)
            g, b = (r(3), r(3)) if affine else (None, None)
            for training in (True, False):
                y, cache = F.batch_norm_forward(x, g, b, r(3), np.abs(r(3)), training)
                F.batch_norm_backward(r(*x.shape), cache)

    def dropout():
        for p, training in ((0.5, True), (0.5, False), (1.0, True)):
            y, cache = F.dropout_forward(r(3, 4), p, training)
            F.dropout_backward(r(3, 4), cache)

    def layers():
        x = r(8, 1, 6, 6)
        model = fg.Sequential(
            fg.Conv2D(1, 4, 3, padding="same", activation="relu"), fg.MaxPool2D(2), fg.Flatten(), fg.Dense(36, 5),
        )
        model.fit(x, np.arange(8) % 5, fg.CrossEntropyLoss(), fg.Adam(model), epochs=1, batch_size=4, progress=False)
        lstm_layer = fg.LSTM(3, 4, num_layers=2, bidirectional=True)
        y = lstm_layer(r(5, 2, 3))
        lstm_layer.backward(r(*y.shape))
        lm = fg.Sequential(fg.Embedding(9, 4), fg.Dropout(0.2), fg.LSTM(4, 5, batch_first=True), fg.LayerNorm(5), fg.Dense(5, 9))
        lm.fit(rng.integers(0, 9, (6, 3)), rng.integers(0, 9, (6, 3, 9)).astype(np.float32), fg.MSELoss(), fg.Adam(lm),
               epochs=1, batch_size=3, progress=False)
        bn = fg.Sequential(fg.Conv2D(1, 2, 3), fg.BatchNorm2D(2), fg.Flatten(), fg.Dense(32, 4), fg.BatchNorm1D(4))
        bn.fit(x, r(8, 4), fg.MSELoss(), fg.SGD(bn, 0.1), epochs=1, batch_size=4, progress=False)
        bn.predict(x)

    for limit in (0, 1 << 62):  # every op on the parallel twins, then on the serial twins
        _jit.PARALLEL_MIN_WORK = limit
        for run in (dense, activation, softmax, conv, pool, lstm, embedding, norm, dropout, layers):
            run()
    print("every path ran")
    """
)


def _files(cache: Path) -> set:
    return {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".probe")}


def _run(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(background.environ(), FASTGRAD_CACHE_DIR=str(cache), PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return background.run([sys.executable, "-c", code], env=env, timeout=900)


def warm_then_every_path():
    """Background job: warm up into an empty cache, then run every path; the cache's files before and after."""
    with tempfile.TemporaryDirectory(prefix="fastgrad-warmup-test-") as tmp:
        cache = Path(tmp) / "cache"
        warm = _run(WARM, cache)
        before = _files(cache) if warm.returncode == 0 else set()
        ran = _run(EVERY_PATH, cache) if warm.returncode == 0 else None
        after = _files(cache)
    return warm, before, ran, after


@pytest.mark.background(job=warm_then_every_path)
def test_after_warmup_no_public_op_compiles():
    warm, before, ran, after = background.result(warm_then_every_path)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert any(name.endswith(".nbi") for name in before), "warm-up cached nothing"
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "every path ran" in ran.stdout
    added = sorted(after - before)
    assert not added, f"{len(added)} cache files were added after warm-up, e.g. {added[:6]}"
