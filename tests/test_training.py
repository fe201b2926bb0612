"""Reproducible, resumable training: seeds, state dicts, checkpoints, callbacks, partial training, train_step, plots."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import distributed as dist

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def keep_rng_state():
    """Tests here reseed the default generator; give the rest of the suite its state back."""
    state = fg.get_rng_state()
    yield
    fg.set_rng_state(state)


def _data(n=60, seed=0, features=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    return x, (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64)


def _mlp(seed=None):
    return fg.Sequential(
        fg.Dense(5, 8, "tanh", dtype=np.float64, seed=seed),
        fg.Dense(8, 2, dtype=np.float64, seed=None if seed is None else seed + 1),
    )


def _params(model):
    return {k: v.copy() for k, v in model.params.items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- 1. one default generator -----------------------------------------------------------------------

def test_manual_seed_makes_seed_none_layers_reproducible():
    fg.manual_seed(7)
    a = _mlp()
    fg.manual_seed(7)
    b = _mlp()
    _assert_same(a.params, b.params)
    assert not np.array_equal(a.params["0.W"][:2, :2], a.params["1.W"][:2, :2]), "two layers draw different numbers"
    fg.manual_seed(8)
    assert not np.array_equal(_mlp().params["0.W"], a.params["0.W"])
    # an explicit seed does not touch the default generator
    fg.manual_seed(7)
    fg.Dense(5, 8, dtype=np.float64, seed=123)
    _assert_same(_mlp().params, a.params)
    assert fg.initial_seed() == 7


SEED_SCRIPT = """
import hashlib, numpy as np, fastgrad as fg
fg.manual_seed(2024)
model = fg.Sequential(fg.Conv2D(1, 3, 3, padding=1, dtype=np.float64), fg.Flatten(), fg.Dense(3 * 5 * 5, 4, dtype=np.float64),
                      fg.Activation("tanh"), fg.Dense(4, 2, dtype=np.float64))
rng = np.random.default_rng(0)
x, y = rng.normal(size=(40, 1, 5, 5)), rng.integers(0, 2, 40)
model.fit(x, y, fg.CrossEntropyLoss(), fg.Adam(model, 1e-2), epochs=2, batch_size=8, progress=False)
h = hashlib.sha256()
for k, v in model.params.items():
    h.update(k.encode() + v.tobytes())
print(h.hexdigest())
"""


def test_a_script_run_twice_after_manual_seed_gives_bitwise_identical_weights():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = [subprocess.run([sys.executable, "-c", SEED_SCRIPT], capture_output=True, text=True, env=env, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout.strip()) == 64


def test_rng_state_round_trip_and_refusals():
    fg.manual_seed(3)
    fg.default_generator().random(5)
    state = fg.get_rng_state()
    first = fg.default_generator().random(4)
    fg.manual_seed(99)
    fg.set_rng_state(state)
    np.testing.assert_array_equal(fg.default_generator().random(4), first)
    assert fg.initial_seed() == 3
    state["state"]["state"] = 0  # mutating the returned dict changes nothing
    assert fg.get_rng_state()["seed"] == 3
    for bad, exc in [({"seed": 1}, TypeError), ({**fg.get_rng_state(), "bit_generator": "MT19937"}, ValueError),
                     ({**fg.get_rng_state(), "uinteger": -1}, ValueError), ("state", TypeError)]:
        with pytest.raises(exc, match="set_rng_state"):
            fg.set_rng_state(bad)
    with pytest.raises(TypeError, match="manual_seed: seed"):
        fg.manual_seed(1.5)
    with pytest.raises(ValueError, match="manual_seed: seed"):
        fg.manual_seed(-1)
    with pytest.raises(TypeError, match="Dense: seed"):
        fg.Dense(2, 2, seed="zero")


def test_loading_does_not_advance_the_default_generator(tmp_path):
    model = _mlp(seed=0)
    fg.save(model, tmp_path / "m.npz")
    fg.save_checkpoint(tmp_path / "c.npz", model, None, 0)
    fg.manual_seed(11)
    loaded = [fg.load(tmp_path / "m.npz"), fg.load_checkpoint(tmp_path / "c.npz").model]  # both build seed=None layers
    after = fg.default_generator().random(3)
    fg.manual_seed(11)
    np.testing.assert_array_equal(after, fg.default_generator().random(3))
    for m in loaded:
        _assert_same(m.params, model.params)


def test_fit_shuffles_with_the_manual_seed_and_epoch_order_depends_on_seed_and_epoch_only():
    x, y = _data()
    fg.manual_seed(5)
    a = _mlp(seed=0)
    a.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(a, 0.1), epochs=3, batch_size=8, progress=False)
    b = _mlp(seed=0)
    b.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(b, 0.1), epochs=3, batch_size=8, progress=False, seed=5)
    c = _mlp(seed=0)
    c.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(c, 0.1), epochs=3, batch_size=8, progress=False, seed=6)
    _assert_same(a.params, b.params)
    assert not np.array_equal(a.params["0.W"], c.params["0.W"])
    # epochs 0-2 in one call == epoch 0, then 1-2 with initial_epoch (same model and optimizer)
    d = _mlp(seed=0)
    opt = fg.SGD(d, 0.1, momentum=0.9)
    d.fit(x, y, fg.CrossEntropyLoss(), opt, epochs=1, batch_size=8, progress=False, seed=5)
    d.fit(x, y, fg.CrossEntropyLoss(), opt, epochs=3, initial_epoch=1, batch_size=8, progress=False, seed=5)
    e = _mlp(seed=0)
    e.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(e, 0.1, momentum=0.9), epochs=3, batch_size=8, progress=False, seed=5)
    _assert_same(d.params, e.params)


# -- 2. state dicts ---------------------------------------------------------------------------------------

def test_model_state_dict_is_a_copy_and_load_checks_everything_first():
    model = _mlp(seed=0)
    state = model.state_dict()
    assert list(state) == list(model.params) and all(isinstance(v, np.ndarray) for v in state.values())
    assert all(not np.shares_memory(state[k], model.params[k]) for k in state)
    state["0.W"] += 1.0
    assert not np.array_equal(state["0.W"], model.params["0.W"])
    other = _mlp(seed=10)
    ids = {k: id(v) for k, v in other.params.items()}
    assert other.load_state_dict(state) == ([], [])
    _assert_same(other.params, state)
    assert {k: id(v) for k, v in other.params.items()} == ids, "parameters are copied into, not replaced"
    before = _params(other)
    bad_cases = [
        ({k: v for k, v in state.items() if k != "1.b"}, ValueError, "missing keys '1.b'"),
        ({**state, "2.W": np.zeros(3)}, ValueError, "unexpected keys '2.W'"),
        ({**state, "1.b": np.zeros(3)}, ValueError, "['1.b'] has shape"),
        ({**state, "1.b": np.zeros(2, dtype=np.int64)}, TypeError, "float array"),
        ({**state, "1.b": [0.0, 0.0]}, TypeError, "numpy array"),
        ([1, 2], TypeError, "state must be a dict"),
    ]
    for bad, exc, words in bad_cases:
        with pytest.raises(exc, match="Sequential.load_state_dict") as info:
            other.load_state_dict(bad)
        assert words in str(info.value)
    _assert_same(other.params, before)
    partial = {"0.W": state["0.W"], "9.x": np.zeros(1)}
    assert other.load_state_dict(partial, strict=False) == (["0.b", "1.W", "1.b"], ["9.x"])
    np.testing.assert_array_equal(other.params["0.W"], state["0.W"])
    other.load_state_dict(model)  # a model is accepted as the source too
    _assert_same(other.params, model.params)
    f32 = fg.Sequential(fg.Dense(5, 8, "tanh", seed=0), fg.Dense(8, 2, seed=1))
    f32.load_state_dict(model.state_dict())  # float64 into float32: rounded, dtype kept
    assert f32.params["0.W"].dtype == np.float32 and np.array_equal(f32.params["0.W"], model.params["0.W"].astype(np.float32))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimizer_state_dict_continues_bitwise(kind):
    x, y = _data()
    loss = fg.CrossEntropyLoss()

    def make(model):
        return fg.SGD(model, 0.1, momentum=0.9, nesterov=True) if kind == "sgd" else fg.Adam(model, 1e-2, betas=(0.8, 0.99))

    a = _mlp(seed=0)
    opt_a = make(a)
    for i in range(3):
        a.train_step(x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8], loss, opt_a)
    saved_model, saved_opt = a.state_dict(), opt_a.state_dict()
    buffers = {"sgd": ["momentum_buffer"], "adam": ["m", "v"]}[kind]
    assert saved_opt["steps"] == 3 and set(saved_opt["state"]["0.W"]) == set(buffers)
    assert not np.shares_memory(saved_opt["state"]["0.W"][buffers[0]], opt_a.state["0.W"][buffers[0]])
    for i in range(3, 6):
        a.train_step(x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8], loss, opt_a)
    b = _mlp(seed=99)
    b.load_state_dict(saved_model)
    opt_b = make(b)
    opt_b.lr = 123.0
    opt_b.load_state_dict(saved_opt)
    assert opt_b.lr == opt_a.lr and opt_b.steps == 3
    for i in range(3, 6):
        b.train_step(x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8], loss, opt_b)
    _assert_same(a.params, b.params)
    # without the optimizer state the continuation differs: the test can fail
    c = _mlp(seed=99)
    c.load_state_dict(saved_model)
    opt_c = make(c)
    for i in range(3, 6):
        c.train_step(x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8], loss, opt_c)
    assert not np.array_equal(a.params["0.W"], c.params["0.W"])


def test_optimizer_load_state_dict_refuses_mismatches_before_changing_anything():
    model = _mlp(seed=0)
    opt = fg.Adam(model, 1e-2)
    x, y = _data()
    model.train_step(x[:8], y[:8], fg.CrossEntropyLoss(), opt)
    good = opt.state_dict()
    wrong_shape = {**good, "state": {**good["state"], "0.W": {"m": np.zeros((2, 2)), "v": good["state"]["0.W"]["v"]}}}
    cases = [
        (fg.SGD(model, 0.1).state_dict(), ValueError, "'SGD' optimizer"),
        ({**good, "state": {"7.W": good["state"]["0.W"]}}, ValueError, "'7.W'"),
        (wrong_shape, ValueError, "shape"),
        ({**good, "config": {**good["config"], "betas": (0.9, 1.5)}}, ValueError, "betas[1]"),
        ({**good, "steps": -1}, ValueError, "steps"),
        ({"lr": 0.1}, TypeError, "keys"),
    ]
    other = fg.Adam(_mlp(seed=0), 5e-3)
    before = other.state_dict()
    for bad, exc, words in cases:
        with pytest.raises(exc, match="Adam.load_state_dict") as info:
            other.load_state_dict(bad)
        assert words in str(info.value)
        assert other.lr == 5e-3 and other.steps == 0 and other.state == {} and other.state_dict()["config"] == before["config"]


# -- 3. checkpoints -------------------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    model = fg.Sequential(fg.Dense(5, 8, "relu", dtype=np.float32, seed=0), fg.Dense(8, 2, dtype=np.float32, seed=1))
    model.layers[0].trainable = False
    opt = fg.SGD([model.layers[1]], 0.05, momentum=0.9)
    x, y = _data()
    model.fit(x, y, fg.CrossEntropyLoss(), opt, epochs=2, batch_size=16, progress=False)
    extra = {"note": "run 3", "scores": np.arange(4.0), "nested": {"a": [1, 2.5, None, True], "b": np.eye(2, dtype=np.int32)}}
    path = tmp_path / "ck.npz"
    fg.save_checkpoint(path, model, opt, 2, **extra)
    assert os.listdir(tmp_path) == ["ck.npz"]
    ck = fg.load_checkpoint(path)
    assert ck.epoch == 2 and ck.rng_state == fg.get_rng_state()
    _assert_same(ck.model.params, model.params)
    assert [layer.trainable for layer in ck.model.layers] == [False, True]
    assert isinstance(ck.optimizer, fg.SGD) and ck.optimizer.model == [ck.model.layers[1]]
    state_a, state_b = opt.state_dict(), ck.optimizer.state_dict()
    assert state_a["config"] == state_b["config"] and state_a["steps"] == state_b["steps"] == 8
    np.testing.assert_array_equal(state_a["state"]["0.W"]["momentum_buffer"], state_b["state"]["0.W"]["momentum_buffer"])
    assert ck.extra["note"] == "run 3" and ck.extra["nested"]["a"] == [1, 2.5, None, True]
    np.testing.assert_array_equal(ck.extra["scores"], np.arange(4.0))
    assert ck.extra["nested"]["b"].dtype == np.int32
    # both resume idioms: objects from the checkpoint, or state dicts into your own objects
    mine = fg.Sequential(fg.Dense(5, 8, "relu", dtype=np.float32, seed=5), fg.Dense(8, 2, dtype=np.float32, seed=6))
    mine_opt = fg.SGD([mine.layers[1]], 0.05, momentum=0.9)
    mine.load_state_dict(ck.model)
    mine_opt.load_state_dict(ck.optimizer)
    _assert_same(mine.params, model.params)
    assert fg.load_checkpoint(path).optimizer.state_dict()["steps"] == 8
    fg.save_checkpoint(tmp_path / "no-opt.npz", model, None, 0)
    assert fg.load_checkpoint(tmp_path / "no-opt.npz").optimizer is None


def test_save_checkpoint_refuses_bad_arguments(tmp_path):
    model = _mlp(seed=0)
    for call, exc, words in [
        (lambda: fg.save_checkpoint(tmp_path / "a.npz", "model", None, 0), TypeError, "model"),
        (lambda: fg.save_checkpoint(tmp_path / "a.npz", model, object(), 0), TypeError, "optimizer"),
        (lambda: fg.save_checkpoint(tmp_path / "a.npz", model, None, -1), TypeError, "epoch"),
        (lambda: fg.save_checkpoint(tmp_path / "a.npz", model, None, 1, bad=object()), TypeError, "extra['bad']"),
        (lambda: fg.save_checkpoint(tmp_path / "a.npz", model, None, 1, bad=np.array(["s"])), TypeError, "numeric"),
        (lambda: fg.save_checkpoint(tmp_path / "a.npz", model, fg.SGD(_mlp(seed=0), 0.1), 1), ValueError, "not part of model"),
        (lambda: fg.save_checkpoint(tmp_path / "nodir" / "a.npz", model, None, 1), FileNotFoundError, "nodir"),
    ]:
        with pytest.raises(exc, match="save_checkpoint") as info:
            call()
        assert words in str(info.value)
    assert os.listdir(tmp_path) == []


def _rewrite(path, src, change):
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _header(arrays, **edits):
    header = json.loads(str(arrays["__checkpoint__"]))
    header.update(edits)
    arrays["__checkpoint__"] = np.array(json.dumps(header))


def test_hostile_checkpoint_files_are_refused(tmp_path):
    model = _mlp(seed=0)
    opt = fg.Adam(model, 1e-2)
    x, y = _data()
    model.fit(x, y, fg.CrossEntropyLoss(), opt, epochs=1, batch_size=16, progress=False)
    good = tmp_path / "good.npz"
    fg.save_checkpoint(good, model, opt, 1, table=np.ones(3))
    blob = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "garbage.npz").write_bytes(os.urandom(1024))
    fg.save(model, tmp_path / "model-file.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    files = {"truncated.npz": None, "garbage.npz": None, "model-file.npz": "__checkpoint__", "array.npy": None}
    edits = {
        "pickled.npz": (lambda a: a.update({"tree/0": np.array([object()], dtype=object)}), None),
        "strings.npz": (lambda a: a.update({"tree/0": np.array(["x"])}), "tree/0"),
        "missing-param.npz": (lambda a: a.pop("model/1.b"), "1.b"),
        "extra-key.npz": (lambda a: a.update({"junk": np.zeros(1)}), "junk"),
        "param-shape.npz": (lambda a: a.update({"model/0.W": np.zeros((2, 2))}), "0.W"),
        "param-dtype.npz": (lambda a: a.update({"model/0.b": a["model/0.b"].astype(np.float32)}), "0.b"),
        "buffer-shape.npz": (lambda a: a.update({k: np.zeros(7) for k in list(a) if k.startswith("tree/")}), "optimizer"),
        "bad-json.npz": (lambda a: a.update({"__checkpoint__": np.array("{oops")}), None),
        "deep-json.npz": (lambda a: a.update({"__checkpoint__": np.array("[" * 100000 + "]" * 100000)}), None),
        "version.npz": (lambda a: _header(a, version=99), "version"),
        "layer-type.npz": (lambda a: _header(a, architecture={"format": "fastgrad-model", "version": 1, "type": "os.system", "config": {}}),
                           "os.system"),
        "epoch.npz": (lambda a: _header(a, epoch=-3), "epoch"),
        "rng.npz": (lambda a: _header(a, rng_state={"seed": 1}), "rng_state"),
        "frozen.npz": (lambda a: _header(a, frozen=["5"]), "'5'"),
        "optimizer-type.npz": (lambda a: _header(a, optimizer={"on": "", "state": {"type": "Evil", "config": {}}}), "Evil"),
        "dangling-ref.npz": (lambda a: _header(a, extra={"t": {"__array__": "tree/99"}}), "tree/99"),
    }
    for name, (change, key) in edits.items():
        _rewrite(tmp_path / name, good, change)
        files[name] = key
    for name, key in files.items():
        with pytest.raises(fg.ModelFileError) as info:
            fg.load_checkpoint(tmp_path / name)
        msg = str(info.value)
        assert name in msg and len(msg) < 300, msg
        if key is not None:
            assert key in msg, msg
    assert len(files) == 20
    assert fg.load_checkpoint(good).epoch == 1


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_resume_in_a_fresh_process_is_bitwise_identical(kind, tmp_path):
    """Epochs 0-3 in one go == epochs 0-1, checkpoint, a new process, load, epochs 2-3 (momentum / Adam state, schedule, shuffle)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = str(HERE / "resume_script.py")
    for mode in ("full", "first", "resume", "fresh"):
        run = subprocess.run([sys.executable, script, mode, kind, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, f"{mode}: {run.stderr}"
    with np.load(tmp_path / f"full-{kind}.npz") as full, np.load(tmp_path / f"resumed-{kind}.npz") as resumed, \
            np.load(tmp_path / f"fresh-{kind}.npz") as fresh:
        assert full.files == resumed.files
        for k in full.files:
            np.testing.assert_array_equal(resumed[k], full[k], err_msg=k)
        assert float(full["lr"]) == {"sgd": 0.05, "adam": 3e-3}[kind] * 0.25
        # a run resumed without the optimizer state is not the same run: the comparison can fail
        assert not np.array_equal(fresh["0_W"], full["0_W"])
    assert fg.load_checkpoint(tmp_path / f"ckpt-{kind}.npz").epoch == 2
    assert fg.load_checkpoint(tmp_path / f"resume-ckpt-{kind}.npz").epoch == 4


# -- 4. callbacks ------------------------------------------------------------------------------------------

class Recorder:
    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def on_train_begin(self, model):
        self.calls.append(("begin", model))

    def on_epoch_end(self, epoch, logs, model):
        self.calls.append(("epoch", epoch, dict(logs)))
        return epoch == self.stop_at

    def on_train_end(self, model):
        self.calls.append(("end", model))


def test_callbacks_are_called_in_order_and_true_stops():
    x, y = _data()
    model = _mlp(seed=0)
    rec, other = Recorder(stop_at=1), Recorder()
    hist = model.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(model, 0.1), epochs=5, batch_size=16, progress=False,
                     validation_data=(x, y), callbacks=[rec, other])
    assert [c[0] for c in rec.calls] == ["begin", "epoch", "epoch", "end"] and rec.calls[0][1] is model
    assert other.calls == rec.calls, "every callback sees the stopping epoch and the end"
    assert len(hist["loss"]) == 2 and [c[1] for c in rec.calls[1:3]] == [0, 1]
    logs = rec.calls[2][2]
    assert set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy", "time", "lr"} and logs["val_loss"] == hist["val_loss"][1]
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        model.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(model, 0.1), progress=False, callbacks=[object()])


def test_early_stopping_rule():
    stop = fg.EarlyStopping(monitor="val_loss", patience=2, min_delta=0.1)
    model = _mlp(seed=0)
    stop.on_train_begin(model)
    decisions = [stop.on_epoch_end(e, {"val_loss": v}, model) for e, v in enumerate([1.0, 0.95, 0.85, 0.8, 0.9])]
    # 0.95 is not better than 1.0 by more than 0.1; 0.85 is; 0.8 is not (by 0.05); the second such epoch stops
    assert decisions == [False, False, False, False, True]
    assert stop.best == 0.85 and stop.best_epoch == 2 and stop.stopped_epoch == 4
    zero = fg.EarlyStopping(monitor="accuracy", mode="max")  # patience 0: the first epoch without improvement stops
    assert [zero.on_epoch_end(e, {"accuracy": a}, model) for e, a in enumerate([0.5, 0.6, 0.6])] == [False, False, True]
    with pytest.raises(KeyError, match="val_loss"):
        fg.EarlyStopping().on_epoch_end(0, {"loss": 1.0}, model)
    for bad in [dict(mode="down"), dict(patience=-1), dict(min_delta=-0.1), dict(restore_best=1)]:
        with pytest.raises((TypeError, ValueError), match="EarlyStopping"):
            fg.EarlyStopping(**bad)


class Score:
    """Puts a scripted value into the logs as "score" (callbacks after it in the list see it)."""

    def __init__(self, values):
        self.values = values

    def on_epoch_end(self, epoch, logs, model):
        logs["score"] = self.values[epoch]


def test_early_stopping_in_fit_restores_the_best_weights():
    x, y = _data()
    model = _mlp(seed=0)
    snapshots = []

    class Snapshot:
        def on_epoch_end(self, epoch, logs, model):
            snapshots.append(_params(model))

    stop = fg.EarlyStopping(monitor="score", patience=2, restore_best=True)
    scores = [5.0, 3.0, 2.0, 2.5, 2.0, 1.0, 0.5]
    hist = model.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(model, 0.5), epochs=7, batch_size=16, progress=False,
                     callbacks=[Score(scores), Snapshot(), stop])
    assert (stop.best_epoch, stop.stopped_epoch, len(hist["loss"])) == (2, 4, 5)
    _assert_same(model.params, snapshots[2])
    assert not np.array_equal(snapshots[2]["0.W"], snapshots[4]["0.W"])


def test_model_checkpoint_best_only_and_csv_logger(tmp_path):
    x, y = _data()
    model = _mlp(seed=0)
    opt = fg.SGD(model, 0.5)
    scores = [3.0, 1.0, 2.0, 0.5, 0.7, 0.6]
    ck_best = fg.ModelCheckpoint(tmp_path / "best.npz", monitor="score", save_best_only=True)
    ck_each = fg.ModelCheckpoint(tmp_path / "e{epoch:02d}-{val_loss:.2f}.npz")
    log = fg.CSVLogger(tmp_path / "log.csv")
    written = []

    class Watch:
        def on_epoch_end(self, epoch, logs, model):
            written.append(fg.load_checkpoint(tmp_path / "best.npz").epoch)

    hist = model.fit(x, y, fg.CrossEntropyLoss(), opt, epochs=6, batch_size=16, progress=False, validation_data=(x[:20], y[:20]),
                     callbacks=[Score(scores), ck_best, ck_each, log, Watch()])
    assert written == [1, 2, 2, 4, 4, 4]  # epochs completed when the best score so far was reached
    saved = fg.load_checkpoint(tmp_path / "best.npz")
    assert saved.extra["logs"]["score"] == 0.5 and saved.extra["logs"]["val_loss"] == hist["val_loss"][3]
    names = sorted(p.name for p in tmp_path.glob("e*.npz"))
    assert names == [f"e{i + 1:02d}-{v:.2f}.npz" for i, v in enumerate(hist["val_loss"])]
    last = fg.load_checkpoint(tmp_path / names[-1])
    _assert_same(last.model.params, model.params)
    assert last.optimizer.lr == 0.5 and len(last.extra["callbacks"]) == 5
    assert last.extra["callbacks"][1] == {"best": 0.5} and last.extra["callbacks"][4] is None
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "epoch,loss,time,accuracy,val_loss,val_accuracy,lr,score" and len(rows) == 7
    assert rows[5].startswith("4,") and float(rows[5].split(",")[1]) == hist["loss"][4]
    # a new fit with append=False starts the file again
    model.fit(x, y, fg.CrossEntropyLoss(), opt, epochs=1, progress=False, callbacks=[log])
    assert (tmp_path / "log.csv").read_text().splitlines()[0] == "epoch,loss,time,accuracy,lr"


# -- 5. schedules live in test_schedules.py; 6. partial training -------------------------------------------

def test_optimizer_over_a_list_of_layers_and_frozen_layers():
    x, y = _data()
    loss = fg.CrossEntropyLoss()
    model = fg.Sequential(fg.Dense(5, 8, "tanh", dtype=np.float64, seed=0), fg.Dense(8, 8, "tanh", dtype=np.float64, seed=1),
                          fg.Dense(8, 2, dtype=np.float64, seed=2))
    before = _params(model)
    opt = fg.Adam([model.layers[1], model.layers[2]], 1e-2)
    assert list(opt.params) == ["0.W", "0.b", "1.W", "1.b"]
    model.train_step(x, y, loss, opt)
    np.testing.assert_array_equal(model.params["0.W"], before["0.W"])
    assert not np.array_equal(model.params["1.W"], before["1.W"]) and not np.array_equal(model.params["2.W"], before["2.W"])
    # freezing: no update and no gradient accumulation, while the gradient still reaches the layers below
    full = fg.SGD(model, 0.1)
    model.layers[1].trainable = False
    mid = _params(model)
    model.zero_grad()
    loss(model(x), y)
    dx = model.backward(loss.backward())
    assert not np.any(model.layers[1].grads["W"]) and np.any(model.layers[0].grads["W"]) and np.any(dx)
    full.step()
    np.testing.assert_array_equal(model.params["1.W"], mid["1.W"])
    assert not np.array_equal(model.params["0.W"], mid["0.W"])
    assert "1.W" not in full.params and "0.W" in full.params
    with pytest.raises(TypeError, match="trainable"):
        model.layers[0].trainable = "no"


def test_frozen_bottom_layers_are_not_run_backward_in_training():
    x, y = _data()
    model = fg.Sequential(fg.Dense(5, 8, "tanh", dtype=np.float64, seed=0), fg.Activation("relu"), fg.Dense(8, 2, dtype=np.float64, seed=1))
    model.layers[0].trainable = False
    calls = []
    for layer in model.layers:
        original = layer.backward
        layer.backward = lambda dy, original=original, layer=layer: calls.append(type(layer).__name__) or original(dy)
        params_only = layer.backward_params
        layer.backward_params = lambda dy, f=params_only, layer=layer: calls.append(type(layer).__name__ + " params") or f(dy)
    model.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(model, 0.1), epochs=1, batch_size=30, progress=False)
    # only the top Dense, once per batch, and without its dL/dx: nothing below it needs a gradient
    assert calls == ["Dense params", "Dense params"], calls
    calls.clear()
    model(x[:4])
    model.backward(np.ones((4, 2)))
    assert calls == ["Dense", "Activation", "Dense"], "backward() itself still returns dL/dx through every layer"


def test_fit_clips_over_the_optimizers_parameters_only():
    x, y = _data(n=16)
    loss = fg.CrossEntropyLoss()
    a, b = _mlp(seed=0), _mlp(seed=0)
    b.zero_grad()
    loss(b(x), y)
    b.backward(loss.backward())
    head = b.layers[1].grads
    norm = np.sqrt(sum(np.sum(g**2) for g in head.values()))
    whole = np.sqrt(sum(np.sum(g**2) for g in b.grads.values()))
    assert whole > 1.05 * norm, (norm, whole)  # clipping over the whole model would scale the head by another factor
    clip = norm / 2
    a.fit(x, y, loss, fg.SGD([a.layers[1]], 0.1), epochs=1, batch_size=16, progress=False, shuffle=False, clip_norm=clip)
    for name, g in head.items():
        expected = b.layers[1].params[name] - 0.1 * g * (clip / (norm + 1e-6))
        np.testing.assert_allclose(a.layers[1].params[name], expected, rtol=1e-12)
    np.testing.assert_array_equal(a.layers[0].params["W"], b.layers[0].params["W"])


def test_fit_still_takes_a_duck_typed_optimizer():
    class Plain:
        """Only step(): fit clips the whole model's gradients for it and logs no lr."""

        def __init__(self, model):
            self.net = model

        def step(self):
            for name, p in self.net.params.items():
                p -= 0.1 * self.net.grads[name]

    x, y = _data()
    a, b = _mlp(seed=0), _mlp(seed=0)
    rec = Recorder()
    a.fit(x, y, fg.CrossEntropyLoss(), Plain(a), epochs=2, batch_size=16, progress=False, clip_norm=0.5, callbacks=[rec])
    b.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(b, 0.1), epochs=2, batch_size=16, progress=False, clip_norm=0.5)
    _assert_same(a.params, b.params)
    assert "lr" not in rec.calls[1][2]


def test_fit_refuses_an_optimizer_of_another_model():
    x, y = _data()
    with pytest.raises(ValueError, match="Sequential.fit: the optimizer was built for a different model"):
        _mlp(seed=0).fit(x, y, fg.CrossEntropyLoss(), fg.SGD(_mlp(seed=0), 0.1), progress=False)
    with pytest.raises(ValueError, match="initial_epoch"):
        model = _mlp(seed=0)
        model.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(model, 0.1), epochs=2, initial_epoch=3, progress=False)


# -- 7. train_step and the PyTorch habit ---------------------------------------------------------------

def test_train_step_is_one_fit_step():
    x, y = _data(n=16)
    a, b = _mlp(seed=0), _mlp(seed=0)
    value = a.train_step(x, y, fg.CrossEntropyLoss(), fg.Adam(a, 1e-2), clip_norm=1.0)
    hist = b.fit(x, y, fg.CrossEntropyLoss(), fg.Adam(b, 1e-2), epochs=1, batch_size=16, shuffle=False, progress=False, clip_norm=1.0)
    _assert_same(a.params, b.params)
    assert value == hist["loss"][0]
    with pytest.raises(FloatingPointError, match="train_step"):
        a.train_step(x, np.full((16, 2), 1e300), fg.MSELoss(), fg.SGD(a, 0.1))


def test_the_pytorch_habit_warns_instead_of_silently_training_nothing():
    x, y = _data(n=16)
    model = _mlp(seed=0)
    opt = fg.SGD(model, 0.1)
    loss = fg.CrossEntropyLoss()
    before = _params(model)
    with pytest.warns(RuntimeWarning, match=r"model.backward\(loss.backward\(\)\)"):
        opt.zero_grad()
        loss(model(x), y)
        loss.backward()  # returns dL/dpred and nothing else
        opt.step()
    _assert_same(model.params, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the correct loop does not warn
        model.train_step(x, y, loss, fg.SGD(model, 0.1))
    readme = (ROOT / "README.md").read_text()
    assert "loss.backward()` returns dL/dpred" in readme and "model.backward(loss.backward())" in readme


# -- 8. plots; augmentation; the one loop under distributed ---------------------------------------------------

def test_plot_history_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = _data()
    model = _mlp(seed=0)
    hist = model.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(model, 0.1), epochs=3, progress=False, validation_data=(x, y))
    out = fg.plot_history(hist, tmp_path / "h.png")
    data = (tmp_path / "h.png").read_bytes()
    assert out == str(tmp_path / "h.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    width = int.from_bytes(data[16:20], "big")
    assert width >= 800, "two panels: loss and accuracy"
    with pytest.raises(TypeError, match="plot_history"):
        fg.plot_history([1, 2], tmp_path / "x.png")


def test_plot_history_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        fg.plot_history({"loss": [1.0, 0.5]}, tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


def test_augment_gets_a_generator_of_seed_and_epoch_and_resumes():
    x, y = _data()
    seen = []

    def augment(xs, ys, rng):
        noise = rng.normal(scale=0.1, size=xs.shape)
        seen.append(float(noise[0, 0]))
        return np.concatenate([xs, xs + noise]), np.concatenate([ys, ys])

    a = _mlp(seed=0)
    opt_a = fg.SGD(a, 0.1, momentum=0.9)
    hist = a.fit(x, y, fg.CrossEntropyLoss(), opt_a, epochs=3, batch_size=16, progress=False, seed=4, augment=augment)
    assert len(set(seen)) == 3 and hist["loss"][0] > 0
    b = _mlp(seed=0)
    opt_b = fg.SGD(b, 0.1, momentum=0.9)
    b.fit(x, y, fg.CrossEntropyLoss(), opt_b, epochs=1, batch_size=16, progress=False, seed=4, augment=augment)
    b.fit(x, y, fg.CrossEntropyLoss(), opt_b, epochs=3, initial_epoch=1, batch_size=16, progress=False, seed=4, augment=augment)
    assert seen[3:] == seen[:3]
    _assert_same(a.params, b.params)
    with pytest.raises(ValueError, match=r"augment\(...\)\[1\]"):
        b.fit(x, y, fg.CrossEntropyLoss(), opt_b, progress=False, augment=lambda xs, ys, rng: (xs, ys[:3]))


def test_one_rank_distributed_fit_runs_the_same_loop_with_callbacks(tmp_path):
    x, y = _data()
    runs = []
    for which in ("local", "serial"):
        model = _mlp(seed=0)
        opt = fg.Adam(model, 1e-2)
        callbacks = [fg.CosineAnnealingLR(opt, T_max=3), fg.EarlyStopping(monitor="loss", patience=5),
                     fg.ModelCheckpoint(tmp_path / f"{which}.npz")]
        kwargs = dict(epochs=4, batch_size=16, progress=False, callbacks=callbacks, validation_data=(x, y), clip_norm=1.0)
        if which == "local":
            hist = model.fit(x, y, fg.CrossEntropyLoss(), opt, **kwargs)
        else:
            hist = dist.fit(model, x, y, fg.CrossEntropyLoss(), opt, comm=dist.SerialComm(), **kwargs)
        runs.append((model, hist, opt.lr))
    _assert_same(runs[0][0].params, runs[1][0].params)
    assert runs[0][1]["loss"] == runs[1][1]["loss"] and runs[0][2] == runs[1][2]
    _assert_same(fg.load_checkpoint(tmp_path / "serial.npz").model.params, runs[1][0].params)
