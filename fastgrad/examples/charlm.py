"""A character-level language model: Embedding -> Dropout -> LSTM -> Dropout -> per-step Dense head -> softmax.

The text is English prose available offline in every Python install: the
docstrings of a few dozen standard-library modules and their public
functions and classes (nothing is downloaded).  Training uses random windows
of ``seq_len`` characters; the model reads the characters' integer codes
(the Embedding learns a vector per character) and the loss is the mean
cross-entropy of predicting each next character, the Dense head acting on
every time step of the LSTM's (T, N, H) output.  Dropout regularises the
small corpus and is switched off (``model.eval()``) for sampling.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import time
import warnings

import numpy as np

from .. import Adam, Dense, Dropout, Embedding, Sequential, clip_grad_norm
from .. import functional as F
from ..functional import lstm_forward
from ..layers.lstm import LSTM

MODULES = (
    "argparse", "bisect", "calendar", "collections", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "enum", "fractions", "functools", "glob", "gzip", "heapq", "inspect", "ipaddress",
    "itertools", "json", "logging", "os", "pathlib", "pickletools", "pprint", "random", "re", "shlex", "shutil",
    "statistics", "string", "subprocess", "tempfile", "textwrap", "threading", "typing", "unittest", "uuid",
    "warnings", "zipfile",
)


def corpus(max_chars=300_000) -> str:
    """Docstrings of standard-library modules and their public members, ASCII only."""
    parts = []
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # pragma: no cover - a trimmed Python install
            continue
        docs = [inspect.getdoc(mod)]
        with warnings.catch_warnings():  # reading deprecated aliases (typing.io, ...) warns
            warnings.simplefilter("ignore", DeprecationWarning)
            for attr in sorted(dir(mod)):
                if not attr.startswith("_"):
                    obj = getattr(mod, attr, None)
                    if inspect.isfunction(obj) or inspect.isclass(obj):
                        docs.append(inspect.getdoc(obj))
        for doc in docs:
            if doc and len(doc) > 80:
                parts.append(doc.strip())
    text = "\n\n".join(dict.fromkeys(parts))  # deduplicated, order kept
    text = "".join(ch for ch in text if ch == "\n" or 32 <= ord(ch) < 127)
    text = re.sub(r" +", " ", text)  # code samples' indentation runs teach the model nothing useful
    return text[:max_chars]


def sample(model: Sequential, chars: str, prompt="The ", length=300, temperature=0.6, seed=0) -> str:
    """Generate text one character at a time, carrying the LSTM state between steps (no dropout)."""
    emb, lstm, head = model.layers[0], model.layers[2], model.layers[4]
    rng = np.random.default_rng(seed)
    index = {c: i for i, c in enumerate(chars)}
    V, H = len(chars), lstm.hidden_size
    W, b = lstm.params["W_l0"], lstm.params["b_l0"]
    h = np.zeros((1, H), lstm.dtype)
    c = np.zeros((1, H), lstm.dtype)
    out = list(prompt)
    ids = [index.get(ch, 0) for ch in prompt]
    for step in range(len(prompt) - 1 + length):
        x = emb.params["W"][[ids[step]]][None]  # (T=1, N=1, E): the character's embedding
        (_, (h, c)), _ = lstm_forward(x, W, b, h, c, lstm.activations, check_finite=False)
        if step < len(prompt) - 1:
            continue
        logits = (h @ head.params["W"].T + head.params["b"])[0].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        nxt = int(rng.choice(V, p=p / p.sum()))
        ids.append(nxt)
        out.append(chars[nxt])
    return "".join(out)


def build(vocab: int, embed=32, hidden=128, dropout=0.1, seed=0, dtype=np.float32) -> Sequential:
    """Embedding(vocab, embed) -> Dropout -> LSTM(embed, hidden) -> Dropout -> Dense(hidden, vocab), time first."""
    return Sequential(
        Embedding(vocab, embed, dtype=dtype, seed=seed),
        Dropout(dropout, seed=seed + 2),
        LSTM(embed, hidden, dtype=dtype, seed=seed + 3),
        Dropout(dropout, seed=seed + 4),
        Dense(hidden, vocab, dtype=dtype, seed=seed + 1),  # on the last axis of (T, N, hidden)
    )


def train(
    steps=3000, seq_len=64, batch_size=32, hidden=128, lr=1e-2, steps_per_epoch=50, max_seconds=80.0,
    sample_length=300, seed=0, progress=True, dtype=np.float32, embed=32, dropout=0.1,
) -> dict:
    """Train for ``steps`` Adam steps (or until ``max_seconds`` after the first step); returns samples, history, timing.

    Result keys: ``samples`` (generated text), ``history`` (``loss`` per epoch of
    ``steps_per_epoch`` steps, in nats per character, and ``time``),
    ``seconds_per_epoch``, ``steps``, ``model`` (see :func:`build`, left in
    evaluation mode) and ``chars`` (the vocabulary).
    """
    text = corpus()
    chars = "".join(sorted(set(text)))
    V = len(chars)
    data = np.frombuffer(text.encode("ascii"), np.uint8)
    lut = np.zeros(128, np.int64)
    lut[[ord(ch) for ch in chars]] = np.arange(V)
    data = lut[data]
    model = build(V, embed, hidden, dropout, seed, dtype)
    opt = Adam(model, lr)
    rng = np.random.default_rng(seed)
    history = {"loss": [], "time": []}
    start = time.perf_counter()
    epoch_start, epoch_losses, done = start, [], 0
    for step in range(steps):
        offsets = rng.integers(0, data.size - seq_len - 1, batch_size)
        window = data[offsets[None, :] + np.arange(seq_len + 1)[:, None]]  # (T+1, N)
        target = window[1:].reshape(-1)
        opt.zero_grad()
        logits = model.forward(window[:-1])  # (T, N, V): integer codes in, the head applied at every step
        value, dlogits = F.cross_entropy(logits.reshape(-1, V), target)
        if not math.isfinite(value):
            raise FloatingPointError(f"charlm.train: loss is {value} at step {step + 1}")
        model.backward(dlogits.reshape(logits.shape))
        clip_grad_norm(model, 5.0)
        opt.step()
        epoch_losses.append(value)
        done = step + 1
        if step == 0:
            # the first step compiles the kernels on a cold cache: not part of the budget
            start = time.perf_counter()
        out_of_time = time.perf_counter() - start > max_seconds
        if done % steps_per_epoch == 0 or done == steps or out_of_time:
            now = time.perf_counter()
            history["loss"].append(float(np.mean(epoch_losses)))
            history["time"].append((now - epoch_start) * steps_per_epoch / len(epoch_losses))
            if progress:
                print(f"step {done:5d}  loss {history['loss'][-1]:.3f} nats/char  {now - start:6.1f} s", flush=True)
            epoch_start, epoch_losses = now, []
        if out_of_time:
            break
    model.eval()
    samples = sample(model, chars, length=sample_length, seed=seed)
    if progress:
        print(samples)
    return {
        "samples": samples,
        "history": history,
        "seconds_per_epoch": float(np.median(history["time"])),
        "seconds": time.perf_counter() - start,
        "steps": done,
        "model": model,
        "chars": chars,
    }


if __name__ == "__main__":  # pragma: no cover
    train()
