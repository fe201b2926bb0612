"""Layers made of layers: one tree of children, seen by params, optimizers, gradcheck, save/load and checkpoints.

Classes are at module level, as in a user's own module, so fg.load finds them.
"""

import json
import pathlib

import numpy as np
import pytest
from needs import needs

import fastgrad as fg
from fastgrad import distributed as dist
from fastgrad.layers.base import walk

DATA = pathlib.Path(__file__).parent / "data"


class Residual(fg.Layer):
    """y = x + tanh(W x + b): the issue's block, children made in the constructor."""

    def __init__(self, n, dtype=np.float32):
        super().__init__(dtype)
        self.inner = fg.Dense(n, n, "tanh", dtype=dtype, seed=5)
        self.n = n

    def forward(self, x):
        return x + self.inner.forward(x)

    def backward(self, dy):
        return dy + self.inner.backward(dy)

    def get_config(self):
        return {**super().get_config(), "n": self.n}


class TwoBranch(fg.Layer):
    """y = a * left(x) + right(x): children passed to the constructor, a parameter of its own."""

    def __init__(self, left, right, dtype=np.float32):
        super().__init__(dtype)
        self.branches = [left, right]
        self.add_param("a", np.array([0.7]))

    def forward(self, x):
        self.left_out = self.branches[0].forward(x)
        return self.params["a"] * self.left_out + self.branches[1].forward(x)

    def backward(self, dy):
        self.grads["a"] += np.sum(dy * self.left_out).reshape(1)
        return self.branches[0].backward(dy * self.params["a"]) + self.branches[1].backward(dy)

    def get_config(self):
        return {**super().get_config(), "left": self.branches[0], "right": self.branches[1]}


class Loop(fg.Layer):
    def __init__(self):
        super().__init__()
        self.me = self


def _issue_model(dtype=np.float32):
    return fg.Sequential(Residual(8, dtype=dtype), fg.Dense(8, 3, dtype=dtype, seed=1))


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8)).astype(np.float32), rng.integers(0, 3, n)


def test_the_issue_block_is_one_tree_with_dotted_names():
    m = _issue_model()
    names = ["0.inner.W", "0.inner.b", "1.W", "1.b"]
    assert list(m.params) == names and list(m.grads) == names
    assert list(fg.SGD(m, 0.1).params) == names
    assert list(m.state_dict()) == names
    assert m.params["0.inner.W"] is m[0].inner.params["W"]  # the arrays the layer holds are the ones that train
    assert [path for path, _ in walk(m)] == ["", "0", "0.inner", "1"]
    assert m.num_params() == 8 * 8 + 8 + 8 * 3 + 3
    assert list(m[0].params) == ["inner.W", "inner.b"]  # the block on its own: its children under their names


def test_the_block_trains_one_step_changes_inner_W():
    m = _issue_model()
    x, y = _data()
    before = m[0].inner.params["W"].copy()
    m.train_step(x, y, fg.CrossEntropyLoss(), fg.SGD(m, 0.1))
    assert not np.array_equal(before, m[0].inner.params["W"])
    history = m.fit(x, y, fg.CrossEntropyLoss(), fg.Adam(m, 1e-2), epochs=5, batch_size=8, progress=False, seed=0)
    assert history["loss"][-1] < history["loss"][0]


def test_gradcheck_lists_every_child_tensor():
    x, _ = _data(4)
    report = fg.gradcheck(_issue_model(), x)
    assert [r.name for r in report.checks()] == ["x", "0.inner.W", "0.inner.b", "1.W", "1.b", "accumulation"]
    # a wrong child gradient is caught in the child's row
    m = _issue_model()
    inner = m[0].inner
    right = inner.backward

    def wrong(dy):
        dx = right(dy)
        inner.grads["b"] *= 1.5
        return dx

    inner.backward = wrong
    report = fg.gradcheck(m, x, raise_on_failure=False)
    assert [r.name for r in report.rows if not r.ok] == ["0.inner.b"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trained_block_round_trips_bitwise_through_save_and_load(dtype, tmp_path):
    m = _issue_model(dtype)
    x, y = _data()
    m.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(m, 0.5), epochs=2, batch_size=8, progress=False, seed=0)
    fresh = _issue_model(dtype)
    assert not np.array_equal(fresh[0].inner.params["W"], m[0].inner.params["W"])  # so the file must carry them
    fg.save(m, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as data:
        assert "param/0.inner.W" in data.files and "param/0.inner.b" in data.files
    again = fg.load(tmp_path / "m.npz")
    assert type(again[0]) is Residual
    for k in m.params:
        assert again.params[k].dtype == m.params[k].dtype and np.array_equal(again.params[k], m.params[k]), k
    assert np.array_equal(again.predict(x), m.predict(x))
    fg.load_weights(fresh, tmp_path / "m.npz")
    assert np.array_equal(fresh[0].inner.params["W"], m[0].inner.params["W"])


def test_checkpoint_resume_of_a_block_is_bitwise(tmp_path):
    x, y = _data(40)
    loss = fg.CrossEntropyLoss()
    whole = _issue_model()
    whole.fit(x, y, loss, fg.Adam(whole, 1e-2), epochs=3, batch_size=8, progress=False, seed=3)
    first = _issue_model()
    opt = fg.Adam(first, 1e-2)
    first.fit(x, y, loss, opt, epochs=1, batch_size=8, progress=False, seed=3)
    fg.save_checkpoint(tmp_path / "ck.npz", first, opt, epoch=1)
    ck = fg.load_checkpoint(tmp_path / "ck.npz")
    assert set(ck.optimizer.state) == set(whole.params)  # Adam's moments of the child too
    ck.model.fit(x, y, loss, ck.optimizer, epochs=3, initial_epoch=ck.epoch, batch_size=8, progress=False, seed=3)
    for k in whole.params:
        assert np.array_equal(ck.model.params[k], whole.params[k]), k


def test_frozen_child_is_skipped_and_its_grads_stay_zero(tmp_path):
    m = _issue_model()
    m[0].inner.trainable = False
    x, y = _data()
    opt = fg.SGD(m, 0.1)
    assert list(opt.params) == ["1.W", "1.b"]
    before = m[0].inner.params["W"].copy()
    m.train_step(x, y, fg.CrossEntropyLoss(), opt)
    assert np.array_equal(before, m[0].inner.params["W"])
    assert not np.any(m[0].inner.grads["W"])  # Sequential.backward zeroes a frozen child inside a block
    fg.save_checkpoint(tmp_path / "ck.npz", m, opt, epoch=0)
    ck = fg.load_checkpoint(tmp_path / "ck.npz")
    assert ck.model[0].inner.trainable is False and list(ck.optimizer.params) == ["1.W", "1.b"]


def test_zero_grad_clip_train_eval_and_state_dict_reach_children():
    m = _issue_model(np.float64)
    for g in m.grads.values():
        g[...] = 3.0
    total = fg.clip_grad_norm(m, 1.0)
    assert total == pytest.approx(3.0 * np.sqrt(m.num_params()))
    assert np.sqrt(sum(np.sum(g * g) for g in m[0].inner.grads.values()) + sum(np.sum(g * g) for g in m[1].grads.values())) \
        == pytest.approx(1.0, rel=1e-5)
    m.zero_grad()
    assert not np.any(m[0].inner.grads["W"])
    m.eval()
    assert m[0].inner.training is False
    m.train()
    state = m.state_dict()
    state["0.inner.W"][...] = 0.25
    other = _issue_model(np.float64)
    other.load_state_dict(state)
    assert np.all(other[0].inner.params["W"] == 0.25)
    with pytest.raises(ValueError, match="missing keys '0.inner.b'"):
        other.load_state_dict({k: v for k, v in state.items() if k != "0.inner.b"})


def test_writing_through_the_merged_dict_lands_in_the_child():
    block = Residual(4)
    w = np.full((4, 4), 0.5, dtype=np.float32)
    block.params["inner.W"] = w
    assert block.inner.params["W"] is w
    with pytest.raises(KeyError, match="add_param"):
        block.params["inner.V"] = w


def test_children_in_lists_and_layers_passed_to_the_constructor_save_and_load(tmp_path):
    block = TwoBranch(fg.Dense(6, 4, "tanh", dtype=np.float64, seed=1), fg.Dense(6, 4, dtype=np.float64, seed=2), np.float64)
    assert list(block.params) == ["a", "branches.0.W", "branches.0.b", "branches.1.W", "branches.1.b"]
    m = fg.Sequential(block, fg.Dense(4, 2, dtype=np.float64, seed=3))
    x = np.random.default_rng(1).standard_normal((5, 6))
    report = fg.gradcheck(m, x)
    assert "0.branches.1.W" in [r.name for r in report.rows] and "0.a" in [r.name for r in report.rows]
    m.fit(x, np.arange(5) % 2, fg.CrossEntropyLoss(), fg.SGD(m, 0.3), epochs=2, batch_size=5, progress=False)
    fg.save(m, tmp_path / "two.npz")
    with np.load(tmp_path / "two.npz") as data:
        arch = json.loads(str(data["__architecture__"]))
    left = arch["config"]["layers"][0]["config"]["left"]
    assert left == {"__layer__": {"type": "Dense", "config": m[0].branches[0].get_config()}}
    again = fg.load(tmp_path / "two.npz")
    assert type(again[0].branches[0]) is fg.Dense and again[0].branches[0] is not m[0].branches[0]
    assert np.array_equal(again.predict(x), m.predict(x))
    assert "0.branches.0" in m.summary((6,)) and "0.branches.1" in m.summary((6,))


def test_a_child_registered_twice_or_a_cycle_is_a_clear_error():
    d = fg.Dense(3, 3)
    with pytest.raises(ValueError, match=r"same Dense is registered twice, as '0' and as '1'"):
        fg.Sequential(d, d)
    shared = TwoBranch(d, d)
    with pytest.raises(ValueError, match=r"registered twice, as 'branches.0' and as 'branches.1'"):
        shared.params
    with pytest.raises(ValueError, match="registered twice"):
        fg.SGD(shared, 0.1)
    with pytest.raises(ValueError, match="cycle"):
        Loop().params
    with pytest.raises(ValueError, match="cycle"):
        fg.Sequential(Loop())


def test_save_refuses_a_child_it_could_not_rebuild(tmp_path):
    class Local(fg.Layer):
        def __init__(self, n):
            super().__init__()
            self.n = n

        def forward(self, x):
            return x

        def backward(self, dy):
            return dy

    block = TwoBranch(Local(3), fg.Dense(3, 3))
    with pytest.raises(TypeError, match=r"TwoBranch.get_config\(\)\['left'\]: .*Local\(\*\*get_config\(\)\) would fail"):
        fg.save(block, tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_data_parallel_path_sees_the_children():
    m = _issue_model(np.float64)
    x, y = _data(16)
    ref = _issue_model(np.float64)
    ref.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(ref, 0.1), epochs=2, batch_size=8, progress=False, seed=0)
    opt = dist.DistributedOptimizer(fg.SGD(m, 0.1), comm=dist.SerialComm())
    dist.fit(m, x, y, fg.CrossEntropyLoss(), opt, epochs=2, batch_size=8, progress=False, seed=0, comm=dist.SerialComm())
    for k in ref.params:
        assert np.array_equal(m.params[k], ref.params[k]), k


def test_to_torch_names_the_user_block_it_cannot_express():
    needs("torch")
    with pytest.raises(TypeError, match="Residual at model.0 has no torch equivalent"):
        fg.to_torch(_issue_model())


def test_a_file_written_before_layers_had_children_still_loads():
    # written by fastgrad at commit 7bc4aa3 (Dense, BatchNorm1D, Dense, trained two epochs)
    m = fg.load(DATA / "v1-dense-batchnorm.npz")
    assert list(m.params) == ["0.W", "0.b", "1.gamma", "1.beta", "2.W", "2.b"]
    assert list(m.buffers) == ["1.running_mean", "1.running_var"]
    assert np.any(m.buffers["1.running_mean"])  # the trained statistics came from the file, not the zeros of a new layer
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    assert np.array_equal(m.predict(x), np.load(DATA / "v1-dense-batchnorm-predict.npy"))


def _adamw_reference(p, grads, lr, betas, eps, weight_decay):
    """torch.optim.AdamW's algorithm (its docs, amsgrad off), one NumPy operation per line, float64."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * weight_decay)
        m = m + (1 - betas[0]) * (g - m)
        v = v * betas[1] + (1 - betas[1]) * g * g
        step_size = lr / (1 - betas[0] ** t)
        denom = np.sqrt(v) / np.sqrt(1 - betas[1] ** t) + eps
        p = p - step_size * (m / denom)
    return p


DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
CUSTOM = {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}


def _adamw_run(dtype, kwargs, steps=8, torch=None):
    """fastgrad's AdamW over ``steps`` random gradients; with torch, torch.optim.AdamW beside it on the same ones."""
    rng = np.random.default_rng(7)
    layer = fg.Dense(50, 40, dtype=dtype, seed=0)
    start = {k: p.copy() for k, p in layer.params.items()}
    opt = fg.AdamW(layer, **kwargs)
    t_params = t_opt = None
    if torch is not None:
        t_params = {k: torch.nn.Parameter(torch.from_numpy(p.copy())) for k, p in layer.params.items()}
        t_opt = torch.optim.AdamW(list(t_params.values()), **kwargs)
    seen = {k: [] for k in layer.params}
    for _ in range(steps):
        for k, g in layer.grads.items():
            g[...] = rng.standard_normal(g.shape)
            seen[k].append(g.copy())
            if torch is not None:
                t_params[k].grad = torch.from_numpy(g.copy())
        opt.step()
        if torch is not None:
            t_opt.step()
    theirs = {k: p.detach().numpy() for k, p in t_params.items()} if torch is not None else None
    return layer, start, seen, theirs


@pytest.mark.parametrize("kwargs", [{}, CUSTOM], ids=["defaults", "custom"])
def test_adamw_follows_torchs_algorithm_to_the_last_bit_in_float64(kwargs):
    layer, start, seen, _ = _adamw_run(np.float64, kwargs)
    config = {**DEFAULTS, **kwargs}
    assert fg.AdamW(layer).get_config() == DEFAULTS
    for k, p in layer.params.items():
        assert np.array_equal(p, _adamw_reference(start[k], seen[k], **config)), k


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kwargs", [{}, CUSTOM], ids=["defaults", "custom"])
def test_adamw_matches_torch_optim_adamw(dtype, kwargs):
    # Not bitwise, and no NumPy formula can be: torch 2.13's CPU kernels fuse multiply-adds
    # (lerp_ is fma(w, end - self, self), addcmul_ fma(value * t1, t2, self)) and its float64 sqrt
    # on AVX-512 is 1 ulp off in 0.75 % of elements (measured).  The gap stays at rounding level:
    # 8 steps, |p| <= 0.15: 3e-17 to 8e-17 in float64, 1.5e-8 to 4.5e-8 in float32 (Intel Xeon, AVX-512).
    torch = needs("torch")
    layer, _, _, theirs = _adamw_run(dtype, kwargs, torch=torch)
    atol = 1e-15 if dtype == np.float64 else 4e-7
    for k, p in layer.params.items():
        np.testing.assert_allclose(p, theirs[k], rtol=0, atol=atol, err_msg=k)


def test_adamw_decays_the_weights_not_the_moments():
    layer = fg.Dense(3, 2, dtype=np.float64, seed=0)
    w0 = layer.params["W"].copy()
    opt = fg.AdamW(layer, lr=0.1, weight_decay=0.5)
    with pytest.warns(RuntimeWarning, match="every gradient is zero"):
        opt.step()  # zero gradients: only the decay acts
    assert np.array_equal(layer.params["W"], w0 * (1 - 0.1 * 0.5))
    assert not np.any(opt.state["W"]["m"]) and not np.any(opt.state["W"]["v"])
    adam = fg.Adam(fg.Dense(3, 2, dtype=np.float64, seed=0), lr=0.1, weight_decay=0.5)
    with pytest.warns(RuntimeWarning, match="every gradient is zero"):
        adam.step()
    assert np.any(adam.state["W"]["m"])  # Adam's L2 term goes through the moments instead
