"""PyTorch interop: ``from_torch(module)`` builds the fastgrad model, ``to_torch(model)`` the torch module.

PyTorch stays optional: it is imported inside the two functions, which raise
ImportError with a clear message when it is not installed.  Weights are
copied (the two models share no memory), the fastgrad model takes the dtype
of the torch parameters (float32 or float64) and each layer's train/eval mode
is carried over.  Conversion is exact: the same arithmetic up to rounding.

========================================  ==========================================================
torch.nn                                  fastgrad
========================================  ==========================================================
Sequential (nested too)                   Sequential
Linear                                    Dense (activation "identity")
Conv1d / Conv2d (zeros padding mode)      Conv1D / Conv2D (stride, padding incl. "same", dilation, groups)
MaxPool1d/2d, AvgPool1d/2d                MaxPool1D/2D, AvgPool1D/2D (floor mode; avg counts padding)
Flatten (start_dim 1, end_dim -1)         Flatten
ReLU, Tanh, Sigmoid, SiLU, ELU(1),        Activation("relu"), ... ("elu", "leaky_relu", "softplus",
LeakyReLU(0.01), Softplus(1),             "hard_sigmoid", "hard_tanh"; GELU() -> "gelu_erf",
Hardsigmoid, Hardtanh(-1, 1), GELU,       GELU("tanh") -> "gelu", Identity -> "identity")
Identity
Softmax(dim), LogSoftmax(dim)             Softmax(axis=dim), LogSoftmax(axis=dim)
Dropout(p)                                Dropout(p)
Embedding                                 Embedding (padding_idx kept)
LayerNorm                                 LayerNorm (bias=False: beta = 0)
BatchNorm1d / BatchNorm2d                 BatchNorm1D / BatchNorm2D (running statistics copied; bias=False: beta = 0)
LSTM                                      LSTM (bias=False: b = 0)
========================================  ==========================================================

Softplus: torch returns x itself where x > threshold (20); fastgrad computes
max(x, 0) + log1p(e^-|x|) everywhere, which differs there by at most e^-20 = 2e-9.
Hardsigmoid: torch's backward multiplies by 1/6 rounded to float32 also in
float64 (3e-8 relative); fastgrad's slope is 1/6 in the layer's dtype.

LSTM weights.  torch keeps ``weight_ih_l{k}`` (4H, in) and ``weight_hh_l{k}``
(4H, H) with row blocks in gate order (i, f, g, o) and two biases; fastgrad
keeps one ``W_l{k}`` (4, H, H + in) with gates (f, i, o, n) acting on the
concatenation [h_{t-1}, x_t] (the cheat sheet's layout), and one bias::

    W[q] = [weight_hh[block p] | weight_ih[block p]],   b[q] = bias_ih[block p] + bias_hh[block p]
    q = f, i, o, n   <-   p = f, i, o, g    (torch block index 1, 0, 3, 2; g is the cell candidate n)

``to_torch`` splits W back at column H and puts the whole bias in ``bias_ih``
(``bias_hh`` = 0).  ``_reverse`` parameters map the same way.

A fastgrad LSTM inside a Sequential (or with ``return_sequences=False``) has
no plain torch equivalent, since ``nn.LSTM`` returns ``(output, (h_n, c_n))``:
``to_torch`` wraps it in :func:`torch_sequence_module`'s ``LSTMOutput``
(an ``nn.Module`` holding the ``nn.LSTM`` as ``.lstm``), which ``from_torch``
reads back.
"""

from __future__ import annotations

import numpy as np

from .layers import (
    LSTM,
    Activation,
    AvgPool1D,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    LayerNorm,
    LogSoftmax,
    MaxPool1D,
    MaxPool2D,
    Softmax,
)
from .functional.geometry import resolve_padding
from .layers.base import Layer
from .model import Sequential

#: fastgrad's LSTM gate q (f, i, o, n) reads torch's row block TORCH_BLOCK[q] of (i, f, g, o);
#: the permutation is its own inverse, so torch block p also reads fastgrad gate TORCH_BLOCK[p]
TORCH_BLOCK = (1, 0, 3, 2)

#: torch activation modules without options -> fastgrad activation names
_PLAIN_ACTIVATIONS = {
    "ReLU": "relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "SiLU": "silu",
    "Hardsigmoid": "hard_sigmoid",
    "Identity": "identity",
}


def _import_torch(where: str):
    try:
        import torch
    except ImportError:
        raise ImportError(f"{where}: PyTorch is not installed (pip install torch); fastgrad needs it only for conversion") from None
    return torch


_SEQUENCE_MODULE = None


def torch_sequence_module():
    """The ``LSTMOutput`` nn.Module class: an ``nn.LSTM`` (``.lstm``) returning its output sequence only,
    or with ``return_sequences=False`` the last layer's final h of each direction, concatenated (N, D*H).

    It lets a fastgrad LSTM sit inside ``nn.Sequential``; created on first use (torch is optional).
    """
    global _SEQUENCE_MODULE
    if _SEQUENCE_MODULE is None:
        torch = _import_torch("torch_sequence_module")

        class LSTMOutput(torch.nn.Module):
            def __init__(self, lstm, return_sequences=True):
                super().__init__()
                self.lstm = lstm
                self.return_sequences = bool(return_sequences)

            def forward(self, x):
                out, (h, _c) = self.lstm(x)
                if self.return_sequences:
                    return out
                directions = 2 if self.lstm.bidirectional else 1
                return torch.cat(list(h[-directions:]), dim=1)

        _SEQUENCE_MODULE = LSTMOutput
    return _SEQUENCE_MODULE


# --------------------------------------------------------------------------------------
# torch -> fastgrad
# --------------------------------------------------------------------------------------


def from_torch(module):
    """A fastgrad model computing what the torch ``module`` computes, with a copy of its weights.

    ``nn.Sequential`` becomes :class:`~fastgrad.Sequential`, every supported
    module its fastgrad layer (table in the module docstring), ``nn.LSTM`` an
    :class:`~fastgrad.LSTM`.  The dtype is the torch parameters' (float32 or
    float64) and each layer's ``training`` flag is the module's.  An unsupported
    module or option raises naming it (``TypeError`` / ``ValueError``).
    """
    torch = _import_torch("from_torch")
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: module must be a torch.nn.Module, got {type(module).__name__}")
    return _from_torch(module, "module", torch)


def _from_torch(m, path: str, torch) -> Layer:
    nn = torch.nn
    kind = type(m).__name__
    where = f"from_torch: {kind} at {path}"
    if type(m) is nn.Sequential:
        layer = Sequential(*[_from_torch(child, f"{path}.{name}", torch) for name, child in m.named_children()])
    elif _SEQUENCE_MODULE is not None and type(m) is _SEQUENCE_MODULE:
        layer = _lstm_from_torch(m.lstm, where, return_sequences=m.return_sequences)
    elif type(m).__module__.startswith("torch.nn") and kind in _CONVERTERS:
        layer = _CONVERTERS[kind](m, where)
    else:
        raise TypeError(f"from_torch: unsupported module {kind} at {path} (supported: see fastgrad.interop)")
    layer.training = bool(m.training)
    return layer


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _dtype(m, where: str):
    """The numpy dtype of the module's parameters: float32 or float64."""
    dtypes = {str(p.dtype) for p in m.parameters(recurse=False)}
    dtypes |= {str(b.dtype) for b in m.buffers(recurse=False) if b.is_floating_point()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in ("torch.float32", "torch.float64"):
        raise TypeError(f"{where}: parameters must all be float32 or all float64, got {sorted(dtypes)}")
    return np.float32 if dtypes == {"torch.float32"} else np.float64


def _require(where: str, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{where}: {what} has no fastgrad equivalent"[:295])


def _set(layer: Layer, name: str, tensor) -> None:
    layer.params[name][...] = _numpy(tensor).reshape(layer.params[name].shape)


def _linear(m, where):
    layer = Dense(m.in_features, m.out_features, bias=m.bias is not None, dtype=_dtype(m, where))
    _set(layer, "W", m.weight)
    if m.bias is not None:
        _set(layer, "b", m.bias)
    return layer


def _conv(m, where):
    nd = 1 if type(m).__name__ == "Conv1d" else 2
    _require(where, m.padding_mode == "zeros", f"padding_mode={m.padding_mode!r}")
    padding = m.padding if isinstance(m.padding, str) else [int(p) for p in m.padding]
    if nd == 1 and not isinstance(padding, str):
        padding = padding[0]
    cls = Conv1D if nd == 1 else Conv2D
    layer = cls(
        m.in_channels, m.out_channels, list(m.kernel_size), stride=list(m.stride), padding=padding,
        dilation=list(m.dilation), groups=m.groups, bias="tied" if m.bias is not None else None, dtype=_dtype(m, where),
    )
    _set(layer, "K", m.weight)
    if m.bias is not None:
        _set(layer, "B", m.bias)
    return layer


def _pool(m, where):
    kind = type(m).__name__
    nd = 1 if kind.endswith("1d") else 2
    _require(where, not m.ceil_mode, "ceil_mode=True")
    if kind.startswith("Max"):
        _require(where, not m.return_indices, "return_indices=True")
        dilation = m.dilation if isinstance(m.dilation, (tuple, list)) else (m.dilation,)
        _require(where, all(d == 1 for d in dilation), f"dilation={m.dilation!r}")
        cls = MaxPool1D if nd == 1 else MaxPool2D
    else:
        _require(where, m.count_include_pad, "count_include_pad=False")
        _require(where, getattr(m, "divisor_override", None) is None, "divisor_override")
        cls = AvgPool1D if nd == 1 else AvgPool2D
    # AvgPool1d keeps 1-tuples, the pools of torch keep ints or tuples: ints per dim either way
    stride = m.stride if m.stride is not None and m.stride != () else m.kernel_size
    return cls(_ints(m.kernel_size, nd), _ints(stride, nd), _ints(m.padding, nd))


def _ints(value, nd: int) -> list:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * nd


def _flatten(m, where):
    _require(where, m.start_dim == 1 and m.end_dim == -1, f"start_dim={m.start_dim}, end_dim={m.end_dim}")
    return Flatten()


def _plain_activation(m, where):
    return Activation(_PLAIN_ACTIVATIONS[type(m).__name__])


def _gelu(m, where):
    return Activation("gelu_erf" if m.approximate == "none" else "gelu")


def _elu(m, where):
    _require(where, m.alpha == 1.0, f"alpha={m.alpha}")
    return Activation("elu")


def _leaky_relu(m, where):
    _require(where, m.negative_slope == 0.01, f"negative_slope={m.negative_slope}")
    return Activation("leaky_relu")


def _softplus(m, where):
    _require(where, m.beta == 1.0, f"beta={m.beta}")
    return Activation("softplus")


def _hardtanh(m, where):
    _require(where, m.min_val == -1.0 and m.max_val == 1.0, f"min_val={m.min_val}, max_val={m.max_val}")
    return Activation("hard_tanh")


def _softmax(m, where):
    _require(where, m.dim is not None, "dim=None")
    return (Softmax if type(m).__name__ == "Softmax" else LogSoftmax)(axis=m.dim)


def _dropout(m, where):
    return Dropout(m.p)


def _embedding(m, where):
    _require(where, m.max_norm is None, f"max_norm={m.max_norm}")
    _require(where, not m.scale_grad_by_freq, "scale_grad_by_freq=True")
    layer = Embedding(m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx, dtype=_dtype(m, where))
    _set(layer, "W", m.weight)
    return layer


def _layer_norm(m, where):
    affine = m.weight is not None
    dtype = _dtype(m, where) if affine else np.float64
    layer = LayerNorm(list(m.normalized_shape), eps=m.eps, elementwise_affine=affine, dtype=dtype)
    if affine:
        _set(layer, "gamma", m.weight)
        if m.bias is not None:
            _set(layer, "beta", m.bias)
        else:
            layer.params["beta"][...] = 0
    return layer


def _batch_norm(m, where):
    _require(where, m.track_running_stats and m.running_mean is not None, "track_running_stats=False")
    _require(where, m.momentum is not None, "momentum=None (cumulative average)")
    cls = BatchNorm1D if type(m).__name__ == "BatchNorm1d" else BatchNorm2D
    layer = cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine, dtype=_dtype(m, where))
    if m.affine:
        _set(layer, "gamma", m.weight)
        if m.bias is not None:
            _set(layer, "beta", m.bias)
        else:  # BatchNorm(bias=False): the shift is 0
            layer.params["beta"][...] = 0
    layer.buffers["running_mean"][...] = _numpy(m.running_mean)
    layer.buffers["running_var"][...] = _numpy(m.running_var)
    return layer


def _lstm(m, where):
    return _lstm_from_torch(m, where, return_sequences=True)


def _lstm_from_torch(m, where, return_sequences):
    _require(where, getattr(m, "proj_size", 0) == 0, f"proj_size={getattr(m, 'proj_size', 0)}")
    _require(where, m.num_layers == 1 or m.dropout == 0, f"dropout={m.dropout} between layers")
    H = m.hidden_size
    layer = LSTM(
        m.input_size, H, num_layers=m.num_layers, bidirectional=m.bidirectional, batch_first=m.batch_first,
        return_sequences=return_sequences, dtype=_dtype(m, where),
    )
    for k in range(m.num_layers):
        for suffix in ("", "_reverse") if m.bidirectional else ("",):
            w_ih = _numpy(getattr(m, f"weight_ih_l{k}{suffix}")).reshape(4, H, -1)
            w_hh = _numpy(getattr(m, f"weight_hh_l{k}{suffix}")).reshape(4, H, H)
            W = layer.params[f"W_l{k}{suffix}"]
            b = layer.params[f"b_l{k}{suffix}"]
            b[...] = 0
            for q, p in enumerate(TORCH_BLOCK):
                W[q, :, :H] = w_hh[p]
                W[q, :, H:] = w_ih[p]
                if m.bias:
                    b[q] = _numpy(getattr(m, f"bias_ih_l{k}{suffix}")).reshape(4, H)[p]
                    b[q] += _numpy(getattr(m, f"bias_hh_l{k}{suffix}")).reshape(4, H)[p]
    return layer


_CONVERTERS = {
    "Linear": _linear,
    "Conv1d": _conv,
    "Conv2d": _conv,
    "MaxPool1d": _pool,
    "MaxPool2d": _pool,
    "AvgPool1d": _pool,
    "AvgPool2d": _pool,
    "Flatten": _flatten,
    "GELU": _gelu,
    "ELU": _elu,
    "LeakyReLU": _leaky_relu,
    "Softplus": _softplus,
    "Hardtanh": _hardtanh,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Dropout": _dropout,
    "Embedding": _embedding,
    "LayerNorm": _layer_norm,
    "BatchNorm1d": _batch_norm,
    "BatchNorm2d": _batch_norm,
    "LSTM": _lstm,
    **{name: _plain_activation for name in _PLAIN_ACTIVATIONS},
}


# --------------------------------------------------------------------------------------
# fastgrad -> torch
# --------------------------------------------------------------------------------------


def to_torch(model):
    """The torch module computing what the fastgrad ``model`` computes, with a copy of its weights.

    The reverse of :func:`from_torch`: Sequential -> ``nn.Sequential``, a layer
    with an activation (Dense, Conv) -> the torch layer followed by the
    activation module, a top-level LSTM -> ``nn.LSTM`` (inside a Sequential, or
    with ``return_sequences=False``: ``LSTMOutput``, see
    :func:`torch_sequence_module`).  Parameters get the layer's dtype, modules
    the layers' train/eval mode.  A layer torch cannot express exactly (untied
    conv bias, asymmetric padding, custom LSTM activations, a user layer)
    raises naming it.
    """
    torch = _import_torch("to_torch")
    if not isinstance(model, Layer):
        raise TypeError(f"to_torch: model must be a fastgrad Layer or Sequential, got {type(model).__name__}")
    if type(model) is LSTM and model.return_sequences:
        return _lstm_to_torch(model, "to_torch: LSTM", torch)
    modules = _to_torch(model, "model", torch)
    return modules[0] if len(modules) == 1 else torch.nn.Sequential(*modules)


def _to_torch(layer, path: str, torch) -> list:
    """The torch modules (one, or a layer and its activation) for one fastgrad layer."""
    nn = torch.nn
    kind = type(layer).__name__
    where = f"to_torch: {kind} at {path}"
    if type(layer) is Sequential:
        children = []
        for i, child in enumerate(layer.layers):
            children.extend(_to_torch(child, f"{path}.{i}", torch))
        out = [nn.Sequential(*children)]
    elif type(layer) is LSTM:
        out = [torch_sequence_module()(_lstm_to_torch(layer, where, torch), layer.return_sequences)]
    elif type(layer) in _BUILDERS:
        out = _BUILDERS[type(layer)](layer, where, torch)
    else:
        raise TypeError(f"to_torch: layer {kind} at {path} has no torch equivalent")
    for module in out:
        module.train(bool(layer.training))
    return out


def _torch_dtype(layer, torch):
    return torch.float64 if np.dtype(layer.dtype) == np.float64 else torch.float32


def _copy(torch, target, array) -> None:
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(array)).reshape(target.shape))


def _activation_module(name: str, where: str, torch):
    nn = torch.nn
    table = {
        "identity": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
        "hard_sigmoid": nn.Hardsigmoid, "hard_tanh": nn.Hardtanh, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU,
        "softplus": nn.Softplus, "gelu_erf": nn.GELU,
    }
    if name == "gelu":
        return nn.GELU(approximate="tanh")
    if name not in table:
        raise ValueError(f"{where}: activation {name!r} has no torch module")
    return table[name]()


def _with_activation(module, layer, where, torch) -> list:
    if layer.activation == "identity":
        return [module]
    return [module, _activation_module(layer.activation, where, torch)]


def _dense_to(layer, where, torch):
    m = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias, dtype=_torch_dtype(layer, torch))
    _copy(torch, m.weight, layer.params["W"])
    if layer.bias:
        _copy(torch, m.bias, layer.params["b"])
    return _with_activation(m, layer, where, torch)


def _conv_padding(layer, where):
    """The layer's padding as torch's Conv padding argument (ints per dim or "same"), or ValueError."""
    nd = layer.nd
    if layer.padding == "same" and all(s == 1 for s in layer.stride):
        return "same"  # same split as torch: the odd pixel after
    if layer.padding == "valid":
        return 0
    if layer.padding == "same":
        if layer.input_size is None:
            raise ValueError(f"{where}: padding 'same' with stride > 1 depends on the input size; torch cannot express it")
        pairs = resolve_padding("same", layer.input_size, layer.kernel_size, layer.stride, layer.dilation, where)
    else:
        pairs = resolve_padding(layer.padding, (1,) * nd, layer.kernel_size, layer.stride, layer.dilation, where)
    if any(b != a for b, a in pairs):
        raise ValueError(f"{where}: asymmetric padding {pairs} has no torch Conv equivalent (pad with nn.ZeroPad first)")
    return tuple(b for b, _ in pairs)


def _conv_to(layer, where, torch):
    if layer.bias == "untied":
        raise ValueError(f"{where}: an untied bias (one per output position) has no torch Conv equivalent")
    cls = torch.nn.Conv1d if layer.nd == 1 else torch.nn.Conv2d
    m = cls(
        layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride, padding=_conv_padding(layer, where),
        dilation=layer.dilation, groups=layer.groups, bias=layer.bias == "tied", dtype=_torch_dtype(layer, torch),
    )
    _copy(torch, m.weight, layer.params["K"])
    if layer.bias == "tied":
        _copy(torch, m.bias, layer.params["B"])
    return _with_activation(m, layer, where, torch)


def _pool_to(layer, where, torch):
    nn = torch.nn
    table = {MaxPool1D: nn.MaxPool1d, MaxPool2D: nn.MaxPool2d, AvgPool1D: nn.AvgPool1d, AvgPool2D: nn.AvgPool2d}
    return [table[type(layer)](tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding))]


def _simple_to(layer, where, torch):
    nn = torch.nn
    if type(layer) is Flatten:
        return [nn.Flatten()]
    if type(layer) is Activation:
        return [_activation_module(layer.name, where, torch)]
    if type(layer) is Dropout:
        return [nn.Dropout(layer.p)]
    return [(nn.Softmax if type(layer) is Softmax else nn.LogSoftmax)(dim=layer.axis)]


def _embedding_to(layer, where, torch):
    m = torch.nn.Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx, dtype=_torch_dtype(layer, torch))
    _copy(torch, m.weight, layer.params["W"])
    return [m]


def _layer_norm_to(layer, where, torch):
    m = torch.nn.LayerNorm(layer.normalized_shape, eps=layer.eps, elementwise_affine=layer.elementwise_affine,
                           dtype=_torch_dtype(layer, torch))
    if layer.elementwise_affine:
        _copy(torch, m.weight, layer.params["gamma"])
        _copy(torch, m.bias, layer.params["beta"])
    return [m]


def _batch_norm_to(layer, where, torch):
    cls = torch.nn.BatchNorm1d if type(layer) is BatchNorm1D else torch.nn.BatchNorm2d
    m = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine, dtype=_torch_dtype(layer, torch))
    if layer.affine:
        _copy(torch, m.weight, layer.params["gamma"])
        _copy(torch, m.bias, layer.params["beta"])
    _copy(torch, m.running_mean, layer.buffers["running_mean"])
    _copy(torch, m.running_var, layer.buffers["running_var"])
    return [m]


def _lstm_to_torch(layer, where, torch):
    if layer.activations is not None and layer.activations != {"f": "sigmoid", "i": "sigmoid", "o": "sigmoid", "n": "tanh", "h": "tanh"}:
        raise ValueError(f"{where}: custom activations {layer.activations} have no torch.nn.LSTM equivalent"[:295])
    H = layer.hidden_size
    m = torch.nn.LSTM(
        layer.input_size, H, num_layers=layer.num_layers, bidirectional=layer.bidirectional, batch_first=layer.batch_first,
        dtype=_torch_dtype(layer, torch),
    )
    for k in range(layer.num_layers):
        for suffix in ("", "_reverse") if layer.bidirectional else ("",):
            W = layer.params[f"W_l{k}{suffix}"]
            b = layer.params[f"b_l{k}{suffix}"]
            order = list(TORCH_BLOCK)  # torch block p <- fastgrad gate TORCH_BLOCK[p]
            _copy(torch, getattr(m, f"weight_hh_l{k}{suffix}"), W[order, :, :H])
            _copy(torch, getattr(m, f"weight_ih_l{k}{suffix}"), W[order, :, H:])
            _copy(torch, getattr(m, f"bias_ih_l{k}{suffix}"), b[order])
            _copy(torch, getattr(m, f"bias_hh_l{k}{suffix}"), np.zeros_like(b))
    m.train(bool(layer.training))
    return m


_BUILDERS = {
    Dense: _dense_to,
    Conv1D: _conv_to,
    Conv2D: _conv_to,
    MaxPool1D: _pool_to,
    MaxPool2D: _pool_to,
    AvgPool1D: _pool_to,
    AvgPool2D: _pool_to,
    Flatten: _simple_to,
    Activation: _simple_to,
    Dropout: _simple_to,
    Softmax: _simple_to,
    LogSoftmax: _simple_to,
    Embedding: _embedding_to,
    LayerNorm: _layer_norm_to,
    BatchNorm1D: _batch_norm_to,
    BatchNorm2D: _batch_norm_to,
}
