"""fg.from_torch / fg.to_torch: converted models give PyTorch's outputs and gradients, both ways.

Skipped without torch, except the check that the conversion functions say clearly
that torch is missing.
"""

import sys

import numpy as np
import pytest
from needs import needs

import fastgrad as fg


def _torch():
    return needs("torch")


def _np(t):
    return t.detach().numpy()


def _close(a, b, tol=1e-10):
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


def _cnn2d(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding="same", groups=2, bias=False),
        nn.GELU(),
        nn.MaxPool2d(2, stride=1, padding=1),
        nn.AvgPool2d((2, 3)),
        nn.Hardtanh(),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(6 * 2 * 2, 7),
        nn.LayerNorm(7),
        nn.SiLU(),
        nn.Linear(7, 5),
        nn.LogSoftmax(dim=1),
    ).double()


def _cnn1d(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv1d(3, 4, 5, stride=2, padding=2),
        nn.BatchNorm1d(4),
        nn.ELU(),
        nn.MaxPool1d(3, stride=2),
        nn.Conv1d(4, 4, 3, padding="same", dilation=2, groups=4),
        nn.Softplus(),
        nn.AvgPool1d(2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 2, 6),
        nn.BatchNorm1d(6),
        nn.LeakyReLU(),
        nn.Linear(6, 3),
        nn.GELU(approximate="tanh"),
        nn.Sigmoid(),
        nn.Softmax(dim=1),
    ).double()


def _trained_statistics(model, x, torch):
    """A few training-mode forwards so BatchNorm's running statistics are not the (0, 1) start."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x + torch.randn_like(x))
    model.eval()


@pytest.mark.parametrize("build,shape", [(_cnn2d, (3, 2, 7, 6)), (_cnn1d, (4, 3, 11))])
def test_torch_cnn_outputs_and_gradients(build, shape):
    torch = _torch()
    torch.manual_seed(0)
    m = build(torch)
    x = torch.randn(*shape, dtype=torch.float64)
    _trained_statistics(m, x, torch)
    ours = fg.from_torch(m)
    assert isinstance(ours, fg.Sequential) and ours.dtype == np.float64
    assert not any(layer.training for layer in ours.layers)
    xt = x.clone().requires_grad_(True)
    yt = m(xt)
    dy = torch.randn_like(yt)
    yt.backward(dy)
    y = ours.forward(x.numpy())
    _close(y, _np(yt))
    dx = ours.backward(dy.numpy())
    _close(dx, xt.grad.numpy())
    torch_grads = [p.grad.numpy() for p in m.parameters()]
    ours_grads = list(ours.grads.values())
    assert len(ours_grads) == len(torch_grads)
    for a, b in zip(ours_grads, torch_grads):
        _close(a, b.reshape(a.shape))
    back = fg.to_torch(ours)
    assert not back.training
    _close(_np(back(x)), _np(m(x)))


@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_bidirectional_two_layer_lstm(batch_first):
    torch = _torch()
    torch.manual_seed(1)
    m = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=batch_first).double()
    ours = fg.from_torch(m)
    assert isinstance(ours, fg.LSTM) and ours.num_layers == 2 and ours.bidirectional and ours.batch_first == batch_first
    x = torch.randn(2, 6, 3, dtype=torch.float64) if batch_first else torch.randn(6, 2, 3, dtype=torch.float64)
    xt = x.clone().requires_grad_(True)
    out, (h, c) = m(xt)
    y = ours.forward(x.numpy())
    _close(y, _np(out))
    _close(ours.state[0], _np(h))
    _close(ours.state[1], _np(c))
    dy = torch.randn_like(out)
    out.backward(dy)
    _close(ours.backward(dy.numpy()), xt.grad.numpy())
    # gradients: fastgrad's W is [W_hh | W_ih] per gate in order (f, i, o, n); torch's blocks are (i, f, g, o)
    H = 5
    for k in range(2):
        for suffix in ("", "_reverse"):
            dW = ours.grads[f"W_l{k}{suffix}"]
            db = ours.grads[f"b_l{k}{suffix}"]
            g_ih = getattr(m, f"weight_ih_l{k}{suffix}").grad.numpy().reshape(4, H, -1)
            g_hh = getattr(m, f"weight_hh_l{k}{suffix}").grad.numpy().reshape(4, H, H)
            g_b = getattr(m, f"bias_ih_l{k}{suffix}").grad.numpy().reshape(4, H)
            for q, p in enumerate((1, 0, 3, 2)):
                _close(dW[q, :, :H], g_hh[p])
                _close(dW[q, :, H:], g_ih[p])
                _close(db[q], g_b[p])
    back = fg.to_torch(ours)
    assert type(back) is torch.nn.LSTM
    out2, (h2, c2) = back(x)
    _close(_np(out2), _np(out))
    _close(_np(h2), _np(h))
    _close(_np(c2), _np(c))


def test_lstm_inside_a_sequential_round_trips():
    torch = _torch()
    lstm = fg.LSTM(4, 3, bidirectional=True, return_sequences=False, dtype=np.float64, seed=0)
    model = fg.Sequential(fg.Embedding(9, 4, dtype=np.float64, seed=1), fg.LSTM(4, 4, dtype=np.float64, seed=2), lstm,
                          fg.Dense(6, 2, "tanh", dtype=np.float64, seed=3))
    x = np.random.default_rng(0).integers(0, 9, (5, 2))
    m = fg.to_torch(model)
    assert type(m[1]).__name__ == "LSTMOutput" and type(m[1].lstm) is torch.nn.LSTM
    _close(_np(m(torch.from_numpy(x))), model(x))
    again = fg.from_torch(m)
    assert [type(la).__name__ for la in again.layers] == ["Embedding", "LSTM", "LSTM", "Dense", "Activation"]
    assert again.layers[2].return_sequences is False
    _close(again(x), model(x))


def _one_module_cases(torch):
    nn = torch.nn
    x4 = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    x3 = torch.randn(2, 3, 8, dtype=torch.float64)
    x2 = torch.randn(4, 6, dtype=torch.float64)
    return [
        (nn.Linear(6, 3), x2),
        (nn.Linear(6, 3, bias=False), torch.randn(2, 5, 6, dtype=torch.float64)),  # N-D input
        (nn.Conv1d(3, 6, 3, stride=2, padding=1, groups=3), x3),
        (nn.Conv2d(3, 2, (2, 3), padding="valid", dilation=(2, 1)), x4),
        (nn.MaxPool1d(3), x3),
        (nn.MaxPool2d((2, 3), stride=(1, 2), padding=1), x4),
        (nn.AvgPool1d(3, stride=1, padding=1), x3),
        (nn.AvgPool2d(2), x4),
        (nn.Flatten(), x4),
        (nn.Identity(), x2),
        (nn.Hardsigmoid(), x2 * 4),  # forward only: torch's backward uses 1/6 rounded to float32
        (nn.Softmax(dim=0), x2),
        (nn.LogSoftmax(dim=-1), x2),
        (nn.Dropout(0.4).eval(), x2),
        (nn.Embedding(7, 3, padding_idx=0), torch.tensor([[0, 3, 6], [1, 1, 2]])),
        (nn.LayerNorm((6, 5), eps=1e-3), x4),
        (nn.LayerNorm(6, elementwise_affine=False), x2),
        (nn.LayerNorm(6, bias=False), x2),
        (nn.BatchNorm1d(6, momentum=0.2), x2),
        (nn.BatchNorm1d(3, affine=False).eval(), x3),
        (nn.BatchNorm2d(3, eps=1e-3), x4),
        (nn.LSTM(6, 2, batch_first=True, bias=False), torch.randn(4, 3, 6, dtype=torch.float64)),
    ]


def test_every_supported_module_both_ways():
    torch = _torch()
    torch.manual_seed(2)
    for m, x in _one_module_cases(torch):
        m = m.double()
        for p in m.parameters():
            with torch.no_grad():
                p.add_(0.1 * torch.randn_like(p))  # LayerNorm / BatchNorm start at (1, 0): move them
        ours = fg.from_torch(m)  # before the forward: BatchNorm in training moves its statistics
        want = m(x)
        want = want[0] if isinstance(want, tuple) else want
        assert ours.training == m.training, type(m).__name__
        got = ours(x.numpy())
        _close(got, _np(want), 1e-12)
        back = fg.to_torch(ours)
        again = back(x)
        again = again[0] if isinstance(again, tuple) else again
        _close(_np(again), _np(want), 1e-12)
        if any(True for _ in m.buffers()) and m.training:  # BatchNorm in training: the same running statistics
            _close(ours.buffers["running_mean"], m.running_mean.numpy())
            _close(ours.buffers["running_var"], m.running_var.numpy())


def test_fastgrad_activations_and_options_to_torch():
    torch = _torch()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 7, 7))
    for act in fg.ACTIVATIONS:
        model = fg.Sequential(fg.Conv2D(2, 3, 3, stride=2, padding="same", input_size=(7, 7), activation=act, dtype=np.float64, seed=0),
                              fg.Flatten(), fg.Dense(48, 4, act, dtype=np.float64, seed=1))
        m = fg.to_torch(model)
        _close(_np(m(torch.from_numpy(x))), model(x), 1e-9 if act == "softplus" else 1e-12)  # torch's softplus threshold
    assert isinstance(fg.to_torch(fg.Dense(3, 2)), torch.nn.Linear)
    m32 = fg.to_torch(fg.Sequential(fg.Dense(3, 2, "relu")))
    assert m32[0].weight.dtype == torch.float32 and isinstance(m32[1], torch.nn.ReLU)
    assert fg.from_torch(m32).dtype == np.float32


def test_unsupported_modules_and_options_are_named():
    torch = _torch()
    nn = torch.nn

    class Block(nn.Module):
        def forward(self, x):
            return x

    for m, exc, words in [
        (nn.Sequential(nn.Linear(2, 2), Block()), TypeError, ["Block", "module.1"]),
        (nn.GRU(2, 3), TypeError, ["GRU"]),
        (nn.Conv2d(1, 1, 3, padding_mode="reflect"), ValueError, ["Conv2d", "padding_mode"]),
        (nn.MaxPool2d(2, ceil_mode=True), ValueError, ["ceil_mode"]),
        (nn.LeakyReLU(0.2), ValueError, ["negative_slope"]),
        (nn.LSTM(2, 3, num_layers=2, dropout=0.5), ValueError, ["dropout"]),
        (nn.BatchNorm1d(3, track_running_stats=False), ValueError, ["track_running_stats"]),
        (nn.Linear(2, 2).half(), TypeError, ["float16"]),
        ("not a module", TypeError, ["torch.nn.Module"]),
    ]:
        with pytest.raises(exc) as info:
            fg.from_torch(m)
        assert all(w in str(info.value) for w in words), str(info.value)
        assert len(str(info.value)) < 300
    for layer, words in [
        (fg.Conv2D(1, 2, 3, bias="untied", input_size=(5, 5)), ["untied"]),
        (fg.Conv1D(1, 2, 3, padding=[(0, 1)]), ["asymmetric"]),
        (fg.Conv1D(1, 2, 3, stride=2, padding="same"), ["same"]),
        (fg.LSTM(2, 3, activations={"h": "relu"}), ["activations"]),
    ]:
        with pytest.raises(ValueError) as info:
            fg.to_torch(layer)
        assert all(w in str(info.value) for w in words), str(info.value)

    class Mine(fg.Layer):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="Mine"):
        fg.to_torch(fg.Sequential(fg.Dense(2, 2), Mine()))


def test_without_torch_the_error_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    for call in (lambda: fg.from_torch(object()), lambda: fg.to_torch(fg.Dense(2, 2))):
        with pytest.raises(ImportError, match="PyTorch is not installed"):
            call()
