"""The user-layer protocol: add_param, training in Sequential, save/load, and the registry by qualified name.

Classes are defined at module level, as in a user's own module: model files
name them ``"test_user_layers:Scale"`` and fg.load finds them because this
module is imported.
"""

import json
import sys

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.layers.base import layer_type


class Scale(fg.Layer):
    """y_sk = g_k x_sk."""

    def __init__(self, n, dtype=np.float32):
        super().__init__(dtype)
        self.n = n
        self.add_param("g", np.linspace(0.5, 1.5, n))

    def forward(self, x):
        self.x = np.asarray(x, dtype=self.dtype)
        return self.x * self.params["g"]

    def backward(self, dy):
        self.grads["g"] += np.sum(dy * self.x, axis=0)
        return dy * self.params["g"]

    def get_config(self):
        return {**super().get_config(), "n": self.n}


class NoConfig(Scale):
    """Needs n but forgets get_config: save must refuse."""

    get_config = fg.Layer.get_config


class Square(fg.Layer):
    """y = x^2, no parameters and no constructor arguments: needs no get_config."""

    def forward(self, x):
        self.x = np.asarray(x)
        return self.x * self.x

    def backward(self, dy):
        return 2 * self.x * dy


class Dense(Scale):
    """A user class with a built-in's name."""


class ArrayConfig(Scale):
    def get_config(self):
        return {**super().get_config(), "n": np.int64(self.n), "init": np.ones(2)}


def test_user_layer_trains_inside_sequential_and_passes_gradcheck():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    target = x @ rng.standard_normal((4, 2)).astype(np.float32) * 2.0
    model = fg.Sequential(fg.Dense(4, 4, seed=1), Scale(4), Square(), fg.Dense(4, 2, seed=2))
    fg.gradcheck(model, x[:3])
    history = model.fit(x, target, fg.MSELoss(), fg.Adam(model, 1e-2), epochs=30, batch_size=16, progress=False)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert not np.allclose(model.layers[1].params["g"], np.linspace(0.5, 1.5, 4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_user_layer_round_trips_through_save_and_load(dtype, tmp_path):
    model = fg.Sequential(fg.Dense(3, 4, dtype=dtype, seed=0), Scale(4, dtype=dtype), Square(), Dense(4, dtype=dtype))
    model.layers[1].params["g"][:] = [0.1, 0.2, 0.3, 0.4]
    fg.save(model, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as data:
        arch = json.loads(str(data["__architecture__"]))
    assert [item["type"] for item in arch["config"]["layers"]] == [
        "Dense", "test_user_layers:Scale", "test_user_layers:Square", "test_user_layers:Dense"]
    loaded = fg.load(tmp_path / "m.npz")
    assert [type(layer) for layer in loaded.layers] == [fg.Dense, Scale, Square, Dense]
    for k, v in model.params.items():
        assert loaded.params[k].dtype == v.dtype and np.array_equal(loaded.params[k], v), k
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(dtype)
    assert np.array_equal(loaded(x), model(x))
    fg.load_weights(model, tmp_path / "m.npz")  # the same architecture, names included
    # a single user layer is a model too
    fg.save(Scale(3, dtype=dtype), tmp_path / "s.npz")
    assert type(fg.load(tmp_path / "s.npz")) is Scale


def test_user_class_named_like_a_builtin_changes_nothing_for_builtins(tmp_path):
    assert fg.Layer.registry["Dense"] is fg.Dense
    assert layer_type(fg.Dense) == "Dense" and layer_type(Dense) == "test_user_layers:Dense"
    fg.save(fg.Sequential(fg.Dense(3, 2, seed=0)), tmp_path / "builtin.npz")
    assert type(fg.load(tmp_path / "builtin.npz").layers[0]) is fg.Dense
    fg.save(Dense(3), tmp_path / "user.npz")
    assert type(fg.load(tmp_path / "user.npz")) is Dense


def test_registry_holds_the_public_builtins_only():
    assert not {"_ConvND", "_Pool", "_AxisLayer"} & set(fg.Layer.registry)
    assert all(cls.__module__.startswith("fastgrad.") for cls in fg.Layer.registry.values())
    assert not {"Scale", "Square", "NoConfig", "ArrayConfig"} & set(fg.Layer.registry)


def test_files_in_the_format_written_before_user_classes_still_load(tmp_path):
    # built-in layers are named by their class name, exactly as fastgrad 0.1.0 wrote them
    arch = {"format": "fastgrad-model", "version": 1, "type": "Sequential", "config": {"layers": [
        {"type": "Dense", "config": {"in_features": 3, "out_features": 2, "activation": "relu", "bias": True,
                                     "dtype": "float64"}},
        {"type": "Softmax", "config": {"axis": -1}},
    ]}}
    W, b = np.arange(6.0).reshape(2, 3), np.array([0.5, -0.5])
    with open(tmp_path / "old.npz", "wb") as fh:
        np.savez(fh, **{"__architecture__": np.array(json.dumps(arch)), "param/0.W": W, "param/0.b": b})
    model = fg.load(tmp_path / "old.npz")
    assert [type(layer) for layer in model.layers] == [fg.Dense, fg.Softmax]
    assert np.array_equal(model.params["0.W"], W) and np.array_equal(model.params["0.b"], b)
    fg.save(model, tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as data:
        assert json.loads(str(data["__architecture__"])) == arch


def _with_type(src, dst, kind):
    """Copy a saved single-layer file, naming another layer class in its architecture."""
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    arch = json.loads(str(arrays["__architecture__"]))
    arch["type"] = kind
    arrays["__architecture__"] = np.array(json.dumps(arch))
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


def test_load_never_imports_a_module_named_in_a_file(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "fg_layers_not_imported.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport fastgrad\nclass Scale(fastgrad.Layer):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fg.save(Scale(3), tmp_path / "good.npz")
    path = _with_type(tmp_path / "good.npz", tmp_path / "other.npz", "fg_layers_not_imported:Scale")
    with pytest.raises(fg.ModelFileError) as info:
        fg.load(path)
    msg = str(info.value)
    assert "import fg_layers_not_imported" in msg and "other.npz" in msg and len(msg) < 300
    assert not marker.exists() and "fg_layers_not_imported" not in sys.modules


@pytest.mark.parametrize("kind,words", [
    ("os:system", "no user Layer class"),  # an imported module, not a Layer class
    ("fastgrad.layers.conv:_ConvND", "no user Layer class"),  # private bases are not loadable
    ("fastgrad.layers.dense:Dense", "no user Layer class"),  # built-ins go by their short name only
    ("test_user_layers:Scale.__init__", "no user Layer class"),
    ("test_user_layers:json.dumps", "no user Layer class"),  # reached through another module: not a Layer
    ("test_user_layers:fg.Dense", "no user Layer class"),  # a built-in reached by a path
    ("test_user_layers:Sc ale", "unknown layer type"),
    ("Scale", "unknown layer type"),  # a user class is never found by its bare name
    ("_ConvND", "unknown layer type"),
])
def test_hostile_or_unknown_type_names_are_refused(kind, words, tmp_path):
    fg.save(Scale(3), tmp_path / "good.npz")
    with pytest.raises(fg.ModelFileError, match=words):
        fg.load(_with_type(tmp_path / "good.npz", tmp_path / "bad.npz", kind))


def test_class_defined_in_a_function_saves_and_its_weights_load(tmp_path):
    class Local(Scale):
        pass

    model = Local(3)
    model.params["g"][:] = 7.0
    fg.save(model, tmp_path / "local.npz")
    with pytest.raises(fg.ModelFileError, match="inside a function"):
        fg.load(tmp_path / "local.npz")
    fresh = Local(3)
    fg.load_weights(fresh, tmp_path / "local.npz")
    assert np.array_equal(fresh.params["g"], model.params["g"])


def test_save_without_get_config_names_the_layer_and_what_to_add(tmp_path):
    path = tmp_path / "m.npz"
    with pytest.raises(TypeError) as info:
        fg.save(fg.Sequential(fg.Dense(3, 3), NoConfig(3)), path)
    msg = str(info.value)
    assert "layer 1" in msg and "NoConfig" in msg and "'n'" in msg and "get_config" in msg and len(msg) < 300
    assert not path.exists()
    with pytest.raises(TypeError, match="JSON"):
        fg.save(ArrayConfig(3), path)
    assert not path.exists()
    fg.save(Square(), path)  # nothing to configure: the default get_config is enough
    assert type(fg.load(path)) is Square


def test_add_param_converts_and_refuses_mistakes():
    class Layer2(fg.Layer):
        def __init__(self, value, dtype=np.float32):
            super().__init__(dtype)
            self.add_param("w", value)

    layer = Layer2(np.arange(3.0))
    assert layer.params["w"].dtype == np.float32 and layer.grads["w"].dtype == np.float32
    assert np.array_equal(layer.params["w"], np.arange(3.0)) and np.array_equal(layer.grads["w"], np.zeros(3))
    assert Layer2([[1.0, 2.0]], dtype=np.float64).params["w"].shape == (1, 2)
    with pytest.raises(ValueError, match="already registered"):
        layer.add_param("w", np.ones(2))
    with pytest.raises(ValueError, match="without '.'"):
        layer.add_param("a.b", np.ones(2))
    with pytest.raises(TypeError, match="float32/float64"):
        layer.add_param("k", np.ones(2, dtype=np.int64))

    class Forgot(fg.Layer):
        def __init__(self):
            self.add_param("w", np.ones(2))

    with pytest.raises(TypeError, match=r"super\(\).__init__\(dtype\)"):
        Forgot()


def test_missing_forward_or_backward_says_what_to_define():
    class Empty(fg.Layer):
        pass

    with pytest.raises(NotImplementedError, match=r"define forward\(x\)"):
        Empty()(np.ones(2))
    with pytest.raises(NotImplementedError, match=r"define backward\(dy\)"):
        Empty().backward(np.ones(2))
