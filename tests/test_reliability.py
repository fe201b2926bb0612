"""Layouts, model files and numerical stability (issue 6).

* Layouts: Fortran order, strided and negatively strided views and read-only
  arrays give bitwise the same result as C-contiguous input.
* Model files: every layer type round-trips bitwise in both dtypes; corrupt or
  hostile files raise ModelFileError naming the file (and the key) and leave
  the model unchanged; a save killed midway leaves the previous file intact.
* Stability: extreme logits, saturated LSTM gates, T = 1000 recurrences.
"""

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastgrad as fg
import fastgrad.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _variants(a):
    """The same values in other memory layouts: F-order, strided, reversed-strided, read-only."""
    f = np.asfortranarray(a)
    big = np.zeros((a.shape[0] * 2,) + a.shape[1:], a.dtype)
    big[::2] = a
    strided = big[::2]
    rev = np.ascontiguousarray(a[::-1])[::-1]
    ro = a.copy()
    ro.setflags(write=False)
    out = [("F-order", f), ("strided", strided), ("negative strides", rev), ("read-only", ro)]
    for name, v in out:
        assert np.array_equal(v, a), name
    return out


def _ops(dtype):
    rng = np.random.default_rng(3)

    def arr(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x2, W, b = arr(6, 5), arr(4, 5), arr(4)
    x4, K = arr(3, 2, 6, 5), arr(4, 2, 3, 2)
    xl, Wl, bl = arr(4, 3, 2), arr(4, 3, 5) * dtype(0.5), arr(4, 3)

    def dense(x):
        y, c = F.dense_forward(x, W, b, "tanh")
        return (y, *F.dense_backward(np.ones_like(y), c))

    def conv(x):
        y, c = F.conv_forward(x, K, None, stride=(2, 1), padding="same", activation="relu")
        return (y, F.conv_backward(np.cos(y), c)[0])

    def pool(x):
        y, c = F.max_pool_forward(x, 2)
        return (y, F.max_pool_backward(np.ones_like(y), c))

    def lstm(x):
        (y, (h, cT)), c = F.lstm_forward(x, Wl, bl)
        return (y, h, cT, *F.lstm_backward(np.ones_like(y), c))

    def softmax(x):
        y = F.softmax(x, axis=0)
        return (y, F.softmax_backward(np.cos(x), y, axis=0), F.cross_entropy(x, np.arange(6) % 5)[1])

    return [("dense", dense, x2), ("conv", conv, x4), ("pool", pool, x4), ("lstm", lstm, xl), ("softmax", softmax, x2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts_give_bitwise_identical_results(dtype):
    for name, op, x in _ops(dtype):
        ref = op(x)
        for layout, v in _variants(x):
            before = v.copy()
            got = op(v)
            assert all(np.array_equal(a, b_) for a, b_ in zip(got, ref)), f"{name} with {layout} input"
            assert np.array_equal(v, before)


def _every_layer_model(dtype):
    return fg.Sequential(
        fg.Conv2D(1, 3, 3, padding="same", activation="relu", dtype=dtype, seed=1),
        fg.Conv2D(3, 4, 2, stride=2, bias="untied", input_size=(6, 6), dtype=dtype, seed=2),
        fg.AvgPool2D(1),
        fg.MaxPool2D(1),
        fg.Flatten(),
        fg.Dense(36, 10, "gelu", dtype=dtype, seed=3),
        fg.Activation("tanh"),
        fg.Softmax(),
        fg.LogSoftmax(),
    )


def _sequence_model(dtype):
    return fg.Sequential(
        fg.Conv1D(3, 4, 3, padding=1, groups=1, dtype=dtype, seed=4),
        fg.MaxPool1D(1),
        fg.AvgPool1D(1),
        fg.Flatten(),
        fg.Dense(20, 6, dtype=dtype, seed=5),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_layer_type_round_trips_bitwise(dtype, tmp_path):
    rng = np.random.default_rng(0)
    lstm = fg.LSTM(3, 4, num_layers=2, bidirectional=True, return_sequences=False, forget_bias=0.5,
                   activations={"h": "hard_tanh"}, dtype=dtype, seed=6)
    cases = [
        (_every_layer_model(dtype), rng.standard_normal((2, 1, 6, 6))),
        (_sequence_model(dtype), rng.standard_normal((2, 3, 5))),
        (fg.Sequential(lstm, fg.Dense(8, 2, dtype=dtype, seed=7)), rng.standard_normal((5, 2, 3))),
        (fg.Sequential(fg.Embedding(7, 4, padding_idx=0, dtype=dtype, seed=8), fg.Dropout(0.3, seed=9), fg.LayerNorm(4, dtype=dtype),
                       fg.Dense(4, 3, "gelu_erf", dtype=dtype, seed=10), fg.Flatten(), fg.BatchNorm1D(6, dtype=dtype)),
         rng.integers(0, 7, (4, 2))),
        (fg.Sequential(fg.Conv2D(1, 2, 3, dtype=dtype, seed=11), fg.BatchNorm2D(2, affine=False, dtype=dtype)),
         rng.standard_normal((3, 1, 4, 4))),
    ]
    for i, (model, x) in enumerate(cases):
        x = x if x.dtype.kind == "i" else x.astype(dtype)
        model(x)  # BatchNorm's running statistics move away from their start
        model.eval()  # Dropout off, BatchNorm on the saved statistics: the outputs must agree bitwise
        path = tmp_path / f"m{i}.npz"
        fg.save(model, path)
        loaded = fg.load(path)
        assert [type(la).__name__ for la in loaded.layers] == [type(la).__name__ for la in model.layers]
        assert list(loaded.params) == list(model.params)
        for k, v in {**model.params, **model.buffers}.items():
            got = {**loaded.params, **loaded.buffers}[k]
            assert got.dtype == v.dtype and np.array_equal(got, v), k
        assert np.array_equal(model(x), loaded.eval()(x))


def _write_npz(path, arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _huge_header_npz(path, good):
    """A valid zip whose parameter member declares a 30 000-character .npy header."""
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }" + " " * 30000 + "\n"
    blob = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode("latin1") + b"\0" * 32
    with zipfile.ZipFile(path, "w") as z:
        with zipfile.ZipFile(good) as src:
            for name in src.namelist():
                z.writestr(name, blob if name.startswith("param/0.W") else src.read(name))


def test_corrupt_and_hostile_files_are_refused_and_model_unchanged(tmp_path):
    model = fg.Sequential(fg.Dense(4, 3, dtype=np.float64, seed=0), fg.Dense(3, 2, dtype=np.float64, seed=1))
    good = tmp_path / "good.npz"
    fg.save(model, good)
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    blob = good.read_bytes()
    bad = {}
    (tmp_path / "truncated.npz").write_bytes(blob[: len(blob) * 2 // 3])
    bad["truncated.npz"] = None
    (tmp_path / "garbage.npz").write_bytes(os.urandom(2048))
    bad["garbage.npz"] = None
    _write_npz(tmp_path / "pickled.npz", {**arrays, "param/0.W": np.array([object()], dtype=object)})
    bad["pickled.npz"] = None
    _write_npz(tmp_path / "missing.npz", {k: v for k, v in arrays.items() if k != "param/1.b"})
    bad["missing.npz"] = "1.b"
    _write_npz(tmp_path / "extra.npz", {**arrays, "param/2.W": np.zeros(3)})
    bad["extra.npz"] = "2.W"
    _write_npz(tmp_path / "shape.npz", {**arrays, "param/0.W": np.zeros((4, 3))})
    bad["shape.npz"] = "0.W"
    _write_npz(tmp_path / "dtype.npz", {**arrays, "param/0.b": arrays["param/0.b"].astype(np.float32)})
    bad["dtype.npz"] = "0.b"
    _write_npz(tmp_path / "noarch.npz", {k: v for k, v in arrays.items() if not k.startswith("__")})
    bad["noarch.npz"] = "__architecture__"
    _write_npz(tmp_path / "badjson.npz", {**arrays, "__architecture__": np.array("{not json")})
    bad["badjson.npz"] = None
    _write_npz(tmp_path / "badtype.npz", {**arrays, "__architecture__": np.array(
        '{"format": "fastgrad-model", "version": 1, "type": "os.system", "config": {}}')})
    bad["badtype.npz"] = "os.system"
    _huge_header_npz(tmp_path / "huge.npz", good)
    bad["huge.npz"] = None

    before = {k: v.copy() for k, v in model.params.items()}
    for name, key in bad.items():
        for call in (lambda p: fg.load(p), lambda p: fg.load_weights(model, p)):
            with pytest.raises(fg.ModelFileError) as info:
                call(tmp_path / name)
            msg = str(info.value)
            assert name in msg and len(msg) < 300, msg
            if key is not None and "architecture" not in msg:
                assert key in msg, msg
    for k, v in model.params.items():
        assert np.array_equal(v, before[k])
    assert len(bad) == 11


KILL_SCRIPT = """
import sys, numpy as np, fastgrad as fg
model = fg.Sequential(fg.Dense(3000, 3000, dtype=np.float64, seed=1))
print("ready", flush=True)
while True:
    fg.save(model, sys.argv[1])
"""


def test_save_killed_midway_leaves_previous_file_intact(tmp_path):
    path = tmp_path / "model.npz"
    small = fg.Sequential(fg.Dense(4, 2, dtype=np.float64, seed=0))
    fg.save(small, path)
    original = path.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # a different model is saved over the same path again and again; kill it while a temp file is being written
    big_path = tmp_path / "big.npz"
    big_path.write_bytes(original)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(big_path)], env=env, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # whatever moment it died at, big.npz is either the original or a complete new model
    loaded = fg.load(big_path)
    assert type(loaded).__name__ == "Sequential"
    assert path.read_bytes() == original


@pytest.mark.parametrize("dtype,scale", [(np.float64, 1e3), (np.float32, 88.0)])
def test_extreme_logits(dtype, scale):
    rng = np.random.default_rng(0)
    x = (rng.uniform(-1, 1, (16, 40)) * scale).astype(dtype)
    y = F.softmax(x)
    assert np.isfinite(y).all() and np.allclose(y.sum(axis=1), 1, rtol=1e-5)
    loss, grad = F.cross_entropy(x, rng.integers(0, 40, 16))
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert np.isfinite(F.log_softmax(x)).all()


def test_saturated_lstm_gates_stay_finite():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3, 4))
    W = rng.standard_normal((4, 5, 9))
    for bias in (100.0, -100.0):
        b = np.full((4, 5), bias)
        (y, (h, c)), cache = F.lstm_forward(x, W, b)
        grads = F.lstm_backward(np.ones_like(y), cache)
        assert np.isfinite(y).all() and all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_long_lstm_gradients_finite_and_clip_exact(scale):
    layer = fg.LSTM(4, 8, dtype=np.float64, seed=0)
    layer.params["W_l0"][:, :, :8] *= scale * np.sqrt(8)
    x = np.random.default_rng(1).standard_normal((1000, 2, 4))
    y = layer(x)
    layer.zero_grad()
    layer.backward(np.ones_like(y))
    assert np.isfinite(y).all()
    assert all(np.isfinite(g).all() for g in layer.grads.values())
    total = np.sqrt(sum(np.sum(g**2) for g in layer.grads.values()))
    assert fg.clip_grad_norm(layer, 1.0) == pytest.approx(total, rel=1e-12)
    after = np.sqrt(sum(np.sum(g**2) for g in layer.grads.values()))
    assert after == pytest.approx(min(total, 1.0), rel=1e-5)
