"""LSTM layer: stacked, optionally bidirectional, over the functional lstm_forward/backward."""

from __future__ import annotations

import numpy as np

from .._checks import as_array, positive_int, real_number
from .. import functional as F
from ..functional.lstm import lstm_activations, lstm_lengths
from ..random import init_generator
from .base import Layer, check_param_sizes, uniform_init


def _reverse_index(T: int, lengths: np.ndarray) -> np.ndarray:
    """time index (T, N) reversing each sequence within its own length (padding stays put).

    The permutation is its own inverse, so it maps reversed outputs back too.
    """
    t = np.arange(T)[:, None]
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def _gather_time(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[index, np.arange(x.shape[1])[None, :]])


class LSTM(Layer):
    """LSTM over sequences, ``x (T, N, input_size)`` (or ``(N, T, input_size)`` with batch_first).

    Parameters ``W_l{k}`` (4, H, H + in_k) and ``b_l{k}`` (4, H) per layer k,
    gates (f, i, o, n) acting on [h_{t-1}, x_t] (see F.lstm_forward), plus
    ``W_l{k}_reverse`` / ``b_l{k}_reverse`` when bidirectional.  in_0 =
    input_size, in_k = H * num_directions for the layers above.

    * output: every h_t of the last layer, (T, N, D*H), forward and reverse
      features concatenated on the last axis like PyTorch; with
      ``return_sequences=False`` the last layer's final h instead, (N, D*H)
      (for bidirectional the forward h_T and the reverse direction's h after
      its last step, i.e. at t = 0, like PyTorch's h_n), so it can feed Dense.
    * ``forward(x, state=None, lengths=None)``: state = (h0, c0), each
      (num_layers * D, N, H) ordered layer 0 forward, layer 0 reverse, layer 1
      forward, ... (PyTorch's order).  ``lengths`` (N,) marks padded steps:
      outputs there are 0, the final state is each sequence's state at its own
      last step, the reverse direction reads each sequence backwards within its
      length, and padded steps receive no gradient.
    * after forward ``layer.state`` = (h_n, c_n); after backward
      ``layer.state_grad`` = (dL/dh0, dL/dc0), same shapes.  ``backward(dy,
      dstate=None)`` accepts an optional upstream gradient on the final state.
    * init U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias (PyTorch), then the
      forget-gate bias b[0] set to ``forget_bias`` (default 1.0); ``seed`` makes it
      reproducible.
    """

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bidirectional=False,
        batch_first=False,
        return_sequences=True,
        activations=None,
        forget_bias=1.0,
        dtype=np.float32,
        seed=None,
    ):
        super().__init__(dtype)
        where = "LSTM"
        self.input_size = positive_int(input_size, "input_size", where)
        self.hidden_size = positive_int(hidden_size, "hidden_size", where)
        self.num_layers = positive_int(num_layers, "num_layers", where)
        for name, flag in (("bidirectional", bidirectional), ("batch_first", batch_first), ("return_sequences", return_sequences)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{where}: {name} must be True or False, got {type(flag).__name__}")
        self.bidirectional = bool(bidirectional)
        self.batch_first = bool(batch_first)
        self.return_sequences = bool(return_sequences)
        self.activations = None if activations is None else dict(activations)
        self._acts = lstm_activations(activations, where)
        self.forget_bias = real_number(forget_bias, "forget_bias", where)
        self.state = None
        self.state_grad = None
        H = self.hidden_size
        shapes = {}
        for layer in range(self.num_layers):
            fan = self.input_size if layer == 0 else H * self.num_directions
            for suffix in self._suffixes():
                shapes[f"W_l{layer}{suffix}"] = (4, H, H + fan)
                shapes[f"b_l{layer}{suffix}"] = (4, H)
        check_param_sizes(where, self.dtype, shapes)
        rng = init_generator(seed, where)  # seed=None: the default generator (fg.manual_seed)
        for name, shape in shapes.items():
            value = uniform_init(rng, shape, H, self.dtype)
            if name.startswith("b_"):
                value[0] = self.forget_bias
            self.add_param(name, value)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    # -- forward ---------------------------------------------------------------
    def _state_in(self, state, N: int):
        where = self._where("forward")
        shape = (self.num_layers * self.num_directions, N, self.hidden_size)
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{where}: state must be a pair (h0, c0), got {type(state).__name__}")
        out = []
        for name, s in zip(("h0", "c0"), state):
            s = as_array(s, f"state {name}", where, ndim=3, dtype=self.dtype)  # checks NaN once here
            if s.shape != shape:
                raise ValueError(f"{where}: state {name} must have shape {shape} (layers*directions, N, H), got {s.shape}")
            out.append(s)
        return out[0], out[1]

    def forward(self, x, state=None, lengths=None):
        where = self._where("forward")
        x = self._input(x, ndim=3)
        if self.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        T, N, n_in = x.shape
        if T == 0:
            raise ValueError(f"{where}: x has zero time steps (shape {x.shape}, time first); T must be >= 1")
        if N == 0:
            raise ValueError(f"{where}: x has an empty batch")
        if n_in != self.input_size:
            raise ValueError(f"{where}: x.shape[-1]={n_in} does not match input_size={self.input_size}")
        h0, c0 = self._state_in(state, N)
        lens = lstm_lengths(lengths, T, N, where)
        rev = _reverse_index(T, lens) if self.bidirectional else None
        H = self.hidden_size
        hn = np.empty((self.num_layers * self.num_directions, N, H), self.dtype)
        cn = np.empty_like(hn)
        caches = []
        inp = x
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(self._suffixes()):
                s = layer * self.num_directions + d
                seq = inp if d == 0 else _gather_time(inp, rev)
                (y, (hT, cT)), cache = F.lstm_forward(
                    seq, self.params[f"W_l{layer}{suffix}"], self.params[f"b_l{layer}{suffix}"],
                    None if h0 is None else h0[s], None if c0 is None else c0[s], self._acts, lens,
                    check_finite=False,  # x and state checked above; params and inner outputs are ours
                )
                hn[s], cn[s] = hT, cT
                outs.append(y if d == 0 else _gather_time(y, rev))
                caches.append(cache)
            inp = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)
        self.state = (hn, cn)
        self._cache = (caches, rev, (T, N))
        if not self.return_sequences:
            top = hn[(self.num_layers - 1) * self.num_directions:]
            return np.ascontiguousarray(np.concatenate(list(top), axis=1))
        return np.ascontiguousarray(inp.transpose(1, 0, 2)) if self.batch_first else inp

    # -- backward --------------------------------------------------------------
    def backward(self, dy, dstate=None):
        where = self._where("backward")
        caches, rev, (T, N) = self._saved()
        H, D = self.hidden_size, self.num_directions
        S = self.num_layers * D
        if self.return_sequences:
            shape = (N, T, D * H) if self.batch_first else (T, N, D * H)
            dy = self._grad_input(dy, shape, self.dtype)
            dseq = np.ascontiguousarray(dy.transpose(1, 0, 2)) if self.batch_first else dy
            dtop = None
        else:
            dy = self._grad_input(dy, (N, D * H), self.dtype)
            dseq = None
            dtop = dy
        dhn = np.zeros((S, N, H), self.dtype)
        dcn = np.zeros((S, N, H), self.dtype)
        if dstate is not None:
            if not isinstance(dstate, (tuple, list)) or len(dstate) != 2:
                raise TypeError(f"{where}: dstate must be a pair (dh_n, dc_n), got {type(dstate).__name__}")
            for name, src, dst in (("dh_n", dstate[0], dhn), ("dc_n", dstate[1], dcn)):
                if src is not None:
                    arr = as_array(src, name, where, dtype=self.dtype)
                    if arr.shape != dhn.shape:
                        raise ValueError(f"{where}: {name} must have shape {dhn.shape}, got {arr.shape}")
                    dst += arr
        if dtop is not None:
            for d in range(D):
                dhn[(self.num_layers - 1) * D + d] += dtop[:, d * H:(d + 1) * H]
        dh0 = np.zeros_like(dhn)
        dc0 = np.zeros_like(dcn)
        for layer in range(self.num_layers - 1, -1, -1):
            fan = self.input_size if layer == 0 else H * D
            dinp = np.zeros((T, N, fan), self.dtype)
            for d, suffix in enumerate(self._suffixes()):
                s = layer * D + d
                part = None
                if dseq is not None:
                    part = np.ascontiguousarray(dseq[:, :, d * H:(d + 1) * H])
                    if d == 1:
                        part = _gather_time(part, rev)
                # the forward direction accumulates straight into dinp; the reverse one reads
                # time backwards, so its dx is mapped back before it is added
                dx = dinp if d == 0 else np.zeros_like(dinp)
                grads = (dx, self.grads[f"W_l{layer}{suffix}"], self.grads[f"b_l{layer}{suffix}"], dh0[s], dc0[s])
                F.lstm_backward_into(grads, part, caches[s], dhn[s], dcn[s], check_finite=False)
                if d == 1:
                    dinp += _gather_time(dx, rev)
            dseq = dinp
        self.state_grad = (dh0, dc0)
        return np.ascontiguousarray(dseq.transpose(1, 0, 2)) if self.batch_first else dseq

    # -- description -------------------------------------------------------------
    def get_config(self):
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "batch_first": self.batch_first,
            "return_sequences": self.return_sequences,
            "activations": None if self.activations is None else dict(self.activations),
            "forget_bias": self.forget_bias,
            "dtype": np.dtype(self.dtype).name,
        }

    def output_shape(self, input_shape):
        """(T, D*H) for one sample's (T, input_size) when return_sequences, else (D*H,)."""
        features = self.hidden_size * self.num_directions
        if not self.return_sequences:
            return (features,)
        return tuple(input_shape[:-1]) + (features,)
