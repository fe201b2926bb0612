"""Sequential, losses, optimizers, save/load, training on real data."""

import os

import numpy as np
import pytest
from needs import needs
from fd import assert_close, numeric_grad

import fastgrad as fg


def _mlp(dtype=np.float64):
    return fg.Sequential(
        fg.Dense(6, 8, "tanh", dtype=dtype, seed=1),
        fg.Dense(8, 5, "softplus", dtype=dtype, seed=2),
        fg.Dense(5, 3, dtype=dtype, seed=3),
    )


def test_sequential_three_layers_finite_differences(rng):
    model = _mlp()
    x = rng.standard_normal((4, 6))
    labels = np.array([0, 2, 1, 2])
    loss = fg.CrossEntropyLoss()
    model.zero_grad()
    loss(model.forward(x), labels)
    dx = model.backward(loss.backward())
    assert list(model.params) == ["0.W", "0.b", "1.W", "1.b", "2.W", "2.b"]

    def value():
        return loss(model.forward(x), labels)

    grads = {k: v.copy() for k, v in model.grads.items()}
    assert_close(dx, numeric_grad(value, x), "x")
    for name, p in model.params.items():
        assert_close(grads[name], numeric_grad(value, p), name)


def test_gradcheck_report_for_model(rng):
    report = fg.gradcheck(_mlp(np.float32), rng.standard_normal((3, 6)))
    assert report.ok and len(report.rows) == 7
    assert report.max_abs_err < 1e-6
    assert "0.W" in str(report)


def test_mse_loss_gradient(rng):
    pred = rng.standard_normal((3, 4))
    target = rng.standard_normal((3, 4))
    loss = fg.MSELoss()
    value = loss(pred, target)
    assert value == pytest.approx(np.mean((pred - target) ** 2))
    assert_close(loss.backward(), numeric_grad(lambda: fg.MSELoss()(pred, target), pred), "mse")


def _quadratic_model(w0):
    layer = fg.Dense(2, 1, bias=False, dtype=np.float64, seed=0)
    layer.params["W"][...] = w0
    return layer


def _sgd_reference(w, grads_fn, lr, momentum, nesterov, wd, steps):
    """torch.optim.SGD's documented algorithm written out for one tensor."""
    buf = None
    for _ in range(steps):
        g = grads_fn(w) + wd * w
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        w = w - lr * g
    return w


def _adam_reference(w, grads_fn, lr, b1, b2, eps, wd, steps):
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t in range(1, steps + 1):
        g = grads_fn(w) + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1**t)
        vhat = v / (1 - b2**t)
        w = w - lr * mhat / (np.sqrt(vhat) + eps)
    return w


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2), (0.5, False, 0.1)])
def test_sgd_matches_torch_rule(momentum, nesterov, wd):
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    target = np.array([[1.0], [-1.0]])
    model = _quadratic_model(np.array([[0.3, -0.2]]))
    opt = fg.SGD(model, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    loss = fg.MSELoss()

    def grad(w):
        return (2 * (x @ w.T - target) / target.size).T @ x

    for _ in range(5):
        opt.zero_grad()
        loss(model(x), target)
        model.backward(loss.backward())
        opt.step()
    expected = _sgd_reference(np.array([[0.3, -0.2]]), grad, 0.05, momentum, nesterov, wd, 5)
    np.testing.assert_allclose(model.params["W"], expected, rtol=1e-13)


def test_adam_matches_torch_rule():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    target = np.array([[1.0], [-1.0]])
    model = _quadratic_model(np.array([[0.3, -0.2]]))
    opt = fg.Adam(model, lr=0.01, weight_decay=1e-2)
    loss = fg.MSELoss()

    def grad(w):
        return (2 * (x @ w.T - target) / target.size).T @ x

    for _ in range(7):
        opt.zero_grad()
        loss(model(x), target)
        model.backward(loss.backward())
        opt.step()
    expected = _adam_reference(np.array([[0.3, -0.2]]), grad, 0.01, 0.9, 0.999, 1e-8, 1e-2, 7)
    np.testing.assert_allclose(model.params["W"], expected, rtol=1e-12)


def test_optimizers_match_pytorch_when_installed(rng):
    torch = needs("torch")
    x = rng.standard_normal((8, 4))
    y = rng.integers(0, 3, 8)
    for make_fg, make_t in [
        (lambda m: fg.SGD(m, 0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
         lambda p: torch.optim.SGD(p, 0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
        (lambda m: fg.Adam(m, 0.01, weight_decay=1e-3), lambda p: torch.optim.Adam(p, 0.01, weight_decay=1e-3)),
    ]:
        model = fg.Sequential(fg.Dense(4, 5, "tanh", dtype=np.float64, seed=0), fg.Dense(5, 3, dtype=np.float64, seed=1))
        lin1, lin2 = torch.nn.Linear(4, 5).double(), torch.nn.Linear(5, 3).double()
        with torch.no_grad():
            for lin, i in ((lin1, 0), (lin2, 1)):
                lin.weight.copy_(torch.from_numpy(model.params[f"{i}.W"]))
                lin.bias.copy_(torch.from_numpy(model.params[f"{i}.b"]))
        net = torch.nn.Sequential(lin1, torch.nn.Tanh(), lin2)
        opt_fg, opt_t = make_fg(model), make_t(net.parameters())
        loss = fg.CrossEntropyLoss()
        for _ in range(6):
            opt_fg.zero_grad()
            loss(model(x), y)
            model.backward(loss.backward())
            opt_fg.step()
            opt_t.zero_grad()
            torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            opt_t.step()
        np.testing.assert_allclose(model.params["0.W"], lin1.weight.detach().numpy(), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(model.params["1.b"], lin2.bias.detach().numpy(), rtol=1e-10, atol=1e-13)


def test_clip_grad_norm_clips_exactly(rng):
    model = _mlp()
    for g in model.grads.values():
        g[...] = rng.standard_normal(g.shape)
    total = np.sqrt(sum(np.sum(g**2) for g in model.grads.values()))
    returned = fg.clip_grad_norm(model, 0.5)
    assert returned == pytest.approx(total)
    after = np.sqrt(sum(np.sum(g**2) for g in model.grads.values()))
    assert after == pytest.approx(0.5, rel=1e-5)
    assert fg.clip_grad_norm(model, 10.0) == pytest.approx(after)  # below max: unchanged
    assert np.sqrt(sum(np.sum(g**2) for g in model.grads.values())) == pytest.approx(after)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_bitwise_round_trip(dtype, tmp_path, rng):
    model = fg.Sequential(
        fg.Dense(6, 8, "gelu", dtype=dtype, seed=1), fg.Activation("tanh"), fg.Dense(8, 3, bias=False, dtype=dtype, seed=2),
        fg.Softmax(), fg.Flatten(),
    )
    path = tmp_path / "model.npz"
    fg.save(model, path)
    loaded = fg.load(path)
    assert [type(la) for la in loaded.layers] == [type(la) for la in model.layers]
    for k, v in model.params.items():
        assert loaded.params[k].dtype == v.dtype and np.array_equal(loaded.params[k], v)
    x = rng.standard_normal((4, 6)).astype(dtype)
    assert np.array_equal(model(x), loaded(x))
    assert [f for f in os.listdir(tmp_path)] == ["model.npz"]  # no temp file left


def test_load_refuses_bad_files_and_leaves_model_unchanged(tmp_path):
    model = _mlp()
    path = tmp_path / "m.npz"
    fg.save(model, path)
    good = path.read_bytes()
    before = {k: v.copy() for k, v in model.params.items()}
    (tmp_path / "trunc.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all" * 10)
    np.savez(tmp_path / "pickled.npz", __architecture__=np.array([{"a": 1}], dtype=object))
    other = fg.Sequential(fg.Dense(6, 9, dtype=np.float64))
    fg.save(other, tmp_path / "other.npz")
    for name in ["trunc.npz", "garbage.npz", "pickled.npz"]:
        with pytest.raises(fg.ModelFileError, match=name):
            fg.load(tmp_path / name)
    with pytest.raises(fg.ModelFileError, match="architecture"):
        fg.load_weights(model, tmp_path / "other.npz")
    wide = fg.Sequential(fg.Dense(6, 9, dtype=np.float64), fg.Dense(9, 5, dtype=np.float64), fg.Dense(5, 3, dtype=np.float64))
    fg.save(wide, tmp_path / "wide.npz")
    with pytest.raises(fg.ModelFileError, match="architecture"):
        fg.load_weights(model, tmp_path / "wide.npz")
    for k, v in model.params.items():
        assert np.array_equal(v, before[k])


@pytest.mark.slow
def test_digits_mlp_reaches_97_percent():
    from fastgrad.examples import mlp

    result = mlp.train(progress=False)
    assert result["test_accuracy"] >= 0.97, result["test_accuracy"]
    assert result["history"]["loss"][-1] < result["history"]["loss"][0]


def test_fit_reports_non_finite_loss(rng):
    model = fg.Sequential(fg.Dense(3, 2, dtype=np.float64, seed=0))
    x = rng.standard_normal((8, 3))
    y = rng.standard_normal((8, 2))
    with pytest.raises(FloatingPointError, match="epoch 1"):
        model.fit(x, y * 1e300, fg.MSELoss(), fg.SGD(model, 1.0), epochs=2, batch_size=4, progress=False)


def test_layers_scan_inputs_once_and_nan_weights_surface_in_the_loss(rng):
    # Policy: a layer checks x / dy itself, then calls the functional API with
    # check_finite=False; its own parameters are not rescanned on every call.
    layer = fg.Dense(3, 2, dtype=np.float64, seed=0)
    with pytest.raises(ValueError, match="Dense.forward.*NaN"):
        layer(np.array([[np.nan, 0.0, 1.0]]))
    layer.params["W"][0, 0] = np.nan  # set by hand, bypassing every API
    y = layer(np.ones((2, 3)))
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1]).all()  # propagated, never cleaned
    model = fg.Sequential(layer)
    with pytest.raises(ValueError, match="MSELoss: pred contains NaN"):  # the loss scans what it is given
        model.fit(rng.standard_normal((8, 3)), rng.standard_normal((8, 2)), fg.MSELoss(), fg.SGD(model, 0.1),
                  epochs=1, batch_size=4, progress=False)


def test_fit_history_and_validation(rng, capsys):
    model = fg.Sequential(fg.Dense(4, 3, dtype=np.float64, seed=0))
    x = rng.standard_normal((20, 4))
    y = np.argmax(x[:, :3], axis=1)
    hist = model.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(model, 0.5), epochs=3, batch_size=8, validation_data=(x, y))
    assert set(hist) == {"loss", "accuracy", "val_loss", "val_accuracy", "time"}
    assert all(len(v) == 3 for v in hist.values())
    assert hist["loss"][-1] < hist["loss"][0]
    assert "epoch 3/3" in capsys.readouterr().err
    text = model.summary((4,))
    assert "15" in text and "Dense" in text
