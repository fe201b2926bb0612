"""The PyTorch CPU peer (optional): autograd, the ops a PyTorch user would call.

PyTorch is never a dependency of fastgrad.  Install it for the benchmark with
``pip install torch==2.13.0`` (a CPU build); without it the torch columns say "n/a".

Forward calls run with autograd on (inputs and parameters require grad), so the
forward saves what the backward needs, as fastgrad's forward does with its cache.
fwd+bwd is forward plus ``y.backward(dy)`` with the gradients reset to None first
(``zero_grad(set_to_none=True)``, PyTorch's default).  The peer protocol is
described in :mod:`benchmarks.peer_numpy`.
"""

from __future__ import annotations

import numpy as np

from .cases import CNN_BLOCKS, CNN_DENSE, MLP_LAYERS, TRAIN_LR, NotAvailable

NAME = "torch"

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

# fastgrad's gate order is (f, i, o, n); PyTorch's is (i, f, g, o) with g = n.
# Torch gate j takes fastgrad gate _GATES[j]; the permutation is its own inverse.
_GATES = [1, 0, 3, 2]


def available() -> bool:
    return torch is not None


def version() -> str:
    return torch.__version__ if torch is not None else "not installed"


def configure(threads: int) -> None:
    """Same intra-op thread count as the other peers; one inter-op thread (no oversubscription)."""
    if torch is None:
        raise NotAvailable("torch is not installed (pip install torch==2.13.0)")
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def _leaf(arr):
    return torch.from_numpy(np.array(arr, copy=True)).requires_grad_(True)


class _LSTMGrads:
    """The raw torch gradients of the LSTM; mapped to fastgrad's layout only for the correctness guard."""

    def __init__(self, dx, w_hh, w_ih, b_ih):
        self.parts = (dx, w_hh, w_ih, b_ih)

    def as_list(self):
        dx, w_hh, w_ih, b_ih = (p.detach().numpy() for p in self.parts)
        h_size = w_hh.shape[1]
        dW = np.concatenate([w_hh.reshape(4, h_size, h_size), w_ih.reshape(4, h_size, -1)], axis=2)[_GATES]
        return [dx.copy(), dW, b_ih.reshape(4, h_size)[_GATES]]


def to_numpy(result) -> list:
    if isinstance(result, _LSTMGrads):
        return result.as_list()
    return [r.detach().numpy().copy() if torch.is_tensor(r) else np.array(r) for r in result]


class _Dense:
    def __init__(self, inp):
        self.x, self.W, self.b = _leaf(inp["x"]), _leaf(inp["W"]), _leaf(inp["b"])
        self.dy = torch.from_numpy(inp["dy"])

    def forward(self):
        return [TF.linear(self.x, self.W, self.b)]

    def fwdbwd(self):
        self.x.grad = self.W.grad = self.b.grad = None
        TF.linear(self.x, self.W, self.b).backward(self.dy)
        return [self.x.grad, self.W.grad, self.b.grad]


class _Conv:
    def __init__(self, inp):
        self.x, self.K, self.B = _leaf(inp["x"]), _leaf(inp["K"]), _leaf(inp["B"])
        self.dy = torch.from_numpy(inp["dy"])

    def forward(self):
        return [TF.conv2d(self.x, self.K, self.B)]

    def fwdbwd(self):
        self.x.grad = self.K.grad = self.B.grad = None
        TF.conv2d(self.x, self.K, self.B).backward(self.dy)
        return [self.x.grad, self.K.grad, self.B.grad]


class _LSTM:
    """torch.nn.LSTM (ATen's fused CPU LSTM) with fastgrad's weights, h0 = c0 = 0."""

    def __init__(self, inp, dtype):
        W, b = inp["W"], inp["b"]
        h_size, i_size = W.shape[1], W.shape[2] - W.shape[1]
        self.lstm = torch.nn.LSTM(i_size, h_size).to(getattr(torch, np.dtype(dtype).name))
        Wt = W[_GATES]
        with torch.no_grad():
            self.lstm.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(Wt[:, :, :h_size]).reshape(4 * h_size, h_size)))
            self.lstm.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(Wt[:, :, h_size:]).reshape(4 * h_size, i_size)))
            self.lstm.bias_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(b[_GATES]).reshape(-1)))
            self.lstm.bias_hh_l0.zero_()
        self.x = _leaf(inp["x"])
        self.dy = torch.from_numpy(inp["dy"])

    def forward(self):
        return [self.lstm(self.x)[0]]

    def fwdbwd(self):
        self.lstm.zero_grad(set_to_none=True)
        self.x.grad = None
        self.lstm(self.x)[0].backward(self.dy)
        m = self.lstm
        return _LSTMGrads(self.x.grad, m.weight_hh_l0.grad, m.weight_ih_l0.grad, m.bias_ih_l0.grad)


class _Softmax:
    def __init__(self, inp):
        self.x = _leaf(inp["x"])
        self.dy = torch.from_numpy(inp["dy"])

    def forward(self):
        return [torch.softmax(self.x, dim=-1)]

    def fwdbwd(self):
        self.x.grad = None
        torch.softmax(self.x, dim=-1).backward(self.dy)
        return [self.x.grad]


class _Train:
    def __init__(self, model, inp, dtype):
        self.model = model.to(getattr(torch, np.dtype(dtype).name))
        params = list(self.model.parameters())
        if [tuple(p.shape) for p in params] != [p.shape for p in inp["params"]]:
            raise RuntimeError("torch model parameter shapes differ from the benchmark's")
        with torch.no_grad():
            for p, src in zip(params, inp["params"]):
                p.copy_(torch.from_numpy(src))
        self.x = torch.from_numpy(inp["x"])
        self.labels = torch.from_numpy(inp["labels"])
        self.loss = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=TRAIN_LR)

    def forward(self):
        return [self.model(self.x)]

    def fwdbwd(self):
        self.opt.zero_grad()
        value = self.loss(self.model(self.x), self.labels)
        value.backward()
        self.opt.step()
        return [value, *self.model.parameters()]


def _mlp():
    layers = []
    for n_in, n_out, act in MLP_LAYERS:
        layers.append(torch.nn.Linear(n_in, n_out))
        if act == "relu":
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _cnn():
    layers = []
    for c_in, c_out, k, pad in CNN_BLOCKS:
        layers += [torch.nn.Conv2d(c_in, c_out, k, padding=pad), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    layers += [torch.nn.Flatten(), torch.nn.Linear(*CNN_DENSE)]
    return torch.nn.Sequential(*layers)


def build(case, dtype, inputs):
    if torch is None:
        raise NotAvailable("torch is not installed (pip install torch==2.13.0)")
    if case.op == "dense":
        return _Dense(inputs)
    if case.op == "conv2d":
        return _Conv(inputs)
    if case.op == "lstm":
        return _LSTM(inputs, dtype)
    if case.op == "softmax":
        return _Softmax(inputs)
    if case.op == "train_mlp":
        return _Train(_mlp(), inputs, dtype)
    if case.op == "train_cnn":
        return _Train(_cnn(), inputs, dtype)
    raise ValueError(f"unknown op {case.op!r}")
