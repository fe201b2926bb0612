"""The LSTM training steps of issue 22: fastgrad against PyTorch and JAX, one process per library.

    python -m benchmarks.lstm_steps [--rounds 3] [--dtypes float32,float64] [--libs fastgrad,torch,jax]

Two steps, each zero_grad + forward + cross-entropy + backward + plain SGD (lr
``fastgrad.cases.TRAIN_LR``), from the same weights (fixed seed, fastgrad's
layout, converted for the peers):

* **row-LSTM** (``fastgrad.examples.lstm_digits``): an 8x8 image read row by
  row, LSTM(8, 64) batch first, the last hidden state into Dense(64, 10);
  batch 32.
* **char-LM** (``fastgrad.examples.charlm`` at its sizes): Embedding(96, 32),
  LSTM(32, 128) time first, Dense(128, 96) at every step; T = 64, N = 32; the
  loss is the mean over all T N next characters.  The example's Dropout layers
  are left out (p = 0) so that every library computes the same function.

fastgrad runs the step as its users write it (``train_step`` for the row-LSTM;
the char-LM example's loop body with ``backward_params``); PyTorch runs
``nn.LSTM`` (ATen's CPU LSTM) with autograd and ``torch.optim.SGD``; JAX one
``jax.jit`` of the whole step (``lax.scan`` LSTM, the peer of benchmarks.peer_jax).

Each library runs in its own process (numba's, OpenMP's and XLA's thread pools
spin between parallel regions and would steal each other's cores), with the
same thread count; rounds are interleaved (round r starts every library once
before round r + 1), and the figure is the median over rounds of each round's
median step time.  Guard: every library's loss after its first and second step
must agree with fastgrad's to 2e-3 (float32) / 1e-8 (float64) relative.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fastgrad.cases import TRAIN_LR

ROOT = Path(__file__).resolve().parents[1]
CASES = ("row-LSTM", "char-LM")
#: the char-LM example's sizes (fastgrad.examples.charlm: corpus() has 96 characters, build(), train())
V, E, H_LM, T_LM, N_LM = 96, 32, 128, 64, 32
#: the row-LSTM example's sizes (fastgrad.examples.lstm_digits.build(hidden=64), batch 32)
ROWS, H_ROW, N_ROW, CLASSES = 8, 64, 32, 10
TOLERANCE = {"float32": 2e-3, "float64": 1e-8}
# fastgrad's gate order is (f, i, o, n); PyTorch's is (i, f, g, o) with g = n (its own inverse)
_GATES = [1, 0, 3, 2]


def _uniform(rng, shape, fan_in, dtype):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(dtype)


def make_inputs(case: str, dtype) -> dict:
    """The data and initial weights of one case in fastgrad's layout (LSTM W (4, H, H + I) on [h, x], b (4, H))."""
    rng = np.random.default_rng(0)
    if case == "row-LSTM":
        return {
            "x": rng.standard_normal((N_ROW, ROWS, ROWS)).astype(dtype),
            "labels": rng.integers(0, CLASSES, N_ROW),
            "W": _uniform(rng, (4, H_ROW, H_ROW + ROWS), H_ROW, dtype),
            "b": _uniform(rng, (4, H_ROW), H_ROW, dtype),
            "Wd": _uniform(rng, (CLASSES, H_ROW), H_ROW, dtype),
            "bd": _uniform(rng, (CLASSES,), H_ROW, dtype),
        }
    tokens = rng.integers(0, V, (T_LM + 1, N_LM))
    return {
        "x": tokens[:-1],
        "labels": tokens[1:].reshape(-1),
        "emb": rng.standard_normal((V, E)).astype(dtype),
        "W": _uniform(rng, (4, H_LM, H_LM + E), H_LM, dtype),
        "b": _uniform(rng, (4, H_LM), H_LM, dtype),
        "Wd": _uniform(rng, (V, H_LM), H_LM, dtype),
        "bd": _uniform(rng, (V,), H_LM, dtype),
    }


# --------------------------------------------------------------------------
# the three libraries: build(case, dtype, inputs) -> step() returning the loss as a float
# --------------------------------------------------------------------------


def _fastgrad(case, dtype, inp):
    import fastgrad as fg
    from fastgrad import functional as F

    if case == "row-LSTM":
        model = fg.Sequential(
            fg.LSTM(ROWS, H_ROW, batch_first=True, return_sequences=False, dtype=dtype), fg.Dense(H_ROW, CLASSES, dtype=dtype)
        )
        lstm = model.layers[0]
    else:
        model = fg.Sequential(fg.Embedding(V, E, dtype=dtype), fg.LSTM(E, H_LM, dtype=dtype), fg.Dense(H_LM, V, dtype=dtype))
        model.layers[0].params["W"][...] = inp["emb"]
        lstm = model.layers[1]
    lstm.params["W_l0"][...] = inp["W"]
    lstm.params["b_l0"][...] = inp["b"]
    model.layers[-1].params["W"][...] = inp["Wd"]
    model.layers[-1].params["b"][...] = inp["bd"]
    opt = fg.SGD(model, TRAIN_LR)
    loss = fg.CrossEntropyLoss()
    x, labels = inp["x"], inp["labels"]
    if case == "row-LSTM":
        return lambda: model.train_step(x, labels, loss, opt)

    def step():  # the char-LM example's loop body (without clipping, with plain SGD)
        model.zero_grad()
        logits = model.forward(x)
        value, dlogits = F.cross_entropy(logits.reshape(-1, V), labels)
        model.backward_params(dlogits.reshape(logits.shape))
        opt.step()
        return value

    return step


def _torch(case, dtype, inp):
    import torch

    tdt = getattr(torch, np.dtype(dtype).name)

    def lstm_of(i_size, h_size, batch_first):
        m = torch.nn.LSTM(i_size, h_size, batch_first=batch_first).to(tdt)
        Wt = inp["W"][_GATES]
        with torch.no_grad():
            m.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(Wt[:, :, :h_size]).reshape(4 * h_size, h_size)))
            m.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(Wt[:, :, h_size:]).reshape(4 * h_size, i_size)))
            m.bias_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(inp["b"][_GATES]).reshape(-1)))
            m.bias_hh_l0.zero_()
        # fastgrad has one bias per gate: the second stays 0 (trained, it would double the bias's step)
        m.bias_hh_l0.requires_grad_(False)
        return m

    head = torch.nn.Linear(*inp["Wd"].shape[::-1]).to(tdt)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(inp["Wd"]))
        head.bias.copy_(torch.from_numpy(inp["bd"]))
    if case == "row-LSTM":
        lstm = lstm_of(ROWS, H_ROW, True)
        modules = [lstm, head]

        def forward(x):
            return head(lstm(x)[0][:, -1])
    else:
        emb = torch.nn.Embedding(V, E).to(tdt)
        with torch.no_grad():
            emb.weight.copy_(torch.from_numpy(inp["emb"]))
        lstm = lstm_of(E, H_LM, False)
        modules = [emb, lstm, head]

        def forward(x):
            return head(lstm(emb(x))[0]).reshape(-1, V)

    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=TRAIN_LR)
    lossf = torch.nn.CrossEntropyLoss()
    x = torch.from_numpy(inp["x"])
    labels = torch.from_numpy(inp["labels"])

    def step():
        opt.zero_grad()
        value = lossf(forward(x), labels)
        value.backward()
        opt.step()
        return value.item()

    return step


def _jax(case, dtype, inp):
    from . import peer_jax

    jax = peer_jax._load()
    jnp = peer_jax.jnp
    if case == "row-LSTM":
        params = [inp["W"], inp["b"], inp["Wd"], inp["bd"]]

        def model(p, x):
            hs = peer_jax._lstm(jnp.transpose(x, (1, 0, 2)), p[0], p[1])  # batch first -> time first
            return hs[-1] @ p[2].T + p[3]
    else:
        params = [inp["emb"], inp["W"], inp["b"], inp["Wd"], inp["bd"]]

        def model(p, x):
            hs = peer_jax._lstm(p[0][x], p[1], p[2])
            return (hs @ p[3].T + p[4]).reshape(-1, V)

    def loss(p, x, labels):
        logp = jax.nn.log_softmax(model(p, x), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    def update(p, x, labels):
        value, grads = jax.value_and_grad(loss)(p, x, labels)
        return value, [a - TRAIN_LR * g for a, g in zip(p, grads)]

    jitted = jax.jit(update, donate_argnums=0)
    state = {"p": [jax.device_put(np.array(a, copy=True)) for a in params]}
    x = jax.device_put(inp["x"])
    labels = jax.device_put(inp["labels"])

    def step():
        value, state["p"] = jax.block_until_ready(jitted(state["p"], x, labels))
        return float(value)

    return step


BUILD = {"fastgrad": _fastgrad, "torch": _torch, "jax": _jax}


# --------------------------------------------------------------------------
# worker: one library, every case and dtype, one round
# --------------------------------------------------------------------------


def _configure(lib: str, threads: int) -> None:
    if lib == "fastgrad":
        import fastgrad

        fastgrad.set_num_threads(threads)
    elif lib == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    elif lib == "jax":
        from . import peer_jax

        peer_jax.configure(threads)


def worker(lib: str, dtypes, threads: int, budget: float) -> dict:
    """{case/dtype: {"ms": median step ms, "losses": [first, second]}} for one library."""
    _configure(lib, threads)
    out = {}
    for dtype in dtypes:
        for case in CASES:
            guard = BUILD[lib](case, dtype, make_inputs(case, dtype))
            losses = [guard(), guard()]
            step = BUILD[lib](case, dtype, make_inputs(case, dtype))
            for _ in range(3):  # warm-up (compiling, first-touch memory)
                step()
            times = []
            start = time.perf_counter()
            while len(times) < 5 or (time.perf_counter() - start < budget and len(times) < 200):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            out[f"{case}/{dtype}"] = {"ms": 1e3 * statistics.median(times), "losses": losses, "calls": len(times)}
    return out


def _child_env(threads: int) -> dict:
    env = os.environ.copy()
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PJRT_NPROC"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run(libs, dtypes, rounds: int, threads: int, budget: float) -> dict:
    """Every library ``rounds`` times, interleaved, each run in a fresh process."""
    samples = {lib: [] for lib in libs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for lib in libs:
                path = Path(tmp) / f"{lib}-{r}.json"
                cmd = [sys.executable, "-m", "benchmarks.lstm_steps", "--worker", lib, "--dtypes", ",".join(dtypes),
                       "--threads", str(threads), "--budget", str(budget), "--json", str(path)]
                print(f"round {r + 1}/{rounds}: {lib}", file=sys.stderr, flush=True)
                done = subprocess.run(cmd, env=_child_env(threads), cwd=ROOT)
                if done.returncode != 0:
                    raise RuntimeError(f"{lib} worker failed (exit {done.returncode})")
                samples[lib].append(json.loads(path.read_text()))
    rows = []
    for dtype in dtypes:
        for case in CASES:
            key = f"{case}/{dtype}"
            row = {"case": case, "dtype": dtype}
            ref = samples["fastgrad"][0][key]["losses"] if "fastgrad" in samples else None
            for lib in libs:
                row[lib] = statistics.median(s[key]["ms"] for s in samples[lib])
                losses = samples[lib][0][key]["losses"]
                if ref is not None:
                    err = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(losses, ref))
                    row[f"{lib} check"] = "ok" if err <= TOLERANCE[dtype] else f"FAILED ({err:.1e})"
            rows.append(row)
    return {"rows": rows, "libs": list(libs), "rounds": rounds, "threads": threads}


def markdown(result: dict) -> str:
    libs = result["libs"]
    peers = [lib for lib in libs if lib != "fastgrad"]
    head = ["step", "dtype", "fastgrad ms"] + [c for p in peers for c in (f"{p} ms", f"x {p}")] + ["check", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["case"], "f" + row["dtype"][5:], f"{row['fastgrad']:.3f}"]
        for p in peers:
            cells += [f"{row[p]:.3f}", f"{row[p] / row['fastgrad']:.2f}x"]
        checks = [row.get(f"{lib} check", "ok") for lib in peers]
        cells.append("ok" if all(c == "ok" for c in checks) else "; ".join(checks))
        if "torch" in peers:
            cells.append("torch >= 1x: " + ("met" if row["torch"] >= row["fastgrad"] else "NOT met"))
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lstm_steps", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--libs", default="fastgrad,torch,jax")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed steps per case, library and round")
    p.add_argument("--worker", choices=sorted(BUILD), help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dtypes = args.dtypes.split(",")
    if args.worker:
        Path(args.json).write_text(json.dumps(worker(args.worker, dtypes, args.threads, args.budget)))
        return 0
    libs = args.libs.split(",")
    if "fastgrad" not in libs:
        p.error("--libs must include fastgrad (the guard compares against it)")
    result = run(libs, dtypes, args.rounds, args.threads, args.budget)
    from fastgrad import _jit

    print(markdown(result))
    print(f"\n{args.rounds} interleaved rounds, {args.threads} threads, one process per library; "
          f"CPU: {_jit.cpu_info()['model']}; medians of each round's median step.")
    failed = [r for r in result["rows"] for k, v in r.items() if k.endswith("check") and v != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
