"""LSTM kernels and layer: reference agreement, finite differences, lengths, dtypes, threads, errors."""

import json

import numpy as np
import pytest
from needs import needs
from fd import assert_close, numeric_grad

import fastgrad.functional as F
from fastgrad import reference as R
from fastgrad.functional import lstm as FL
from fastgrad.layers.lstm import LSTM

SMOOTH = {"f": "tanh", "i": "gelu", "o": "softplus", "n": "silu", "h": "sigmoid"}
KINKY = {"f": "hard_sigmoid", "i": "elu", "o": "identity", "n": "leaky_relu", "h": "hard_tanh"}


def _problem(rng, T, N, n_in, H, dtype=np.float64, scale=0.6):
    x = rng.standard_normal((T, N, n_in))
    W = rng.standard_normal((4, H, H + n_in)) * scale / np.sqrt(H + n_in)
    b = rng.standard_normal((4, H)) * 0.3
    h0 = rng.standard_normal((N, H)) * 0.5
    c0 = rng.standard_normal((N, H)) * 0.5
    return [a.astype(dtype) for a in (x, W, b, h0, c0)]


def _upstream(rng, T, N, H, mode):
    dy = rng.standard_normal((T, N, H)) if mode in ("outputs", "both") else None
    dhT = rng.standard_normal((N, H)) if mode in ("final", "both") else None
    dcT = rng.standard_normal((N, H)) if mode in ("final", "both") else None
    return dy, dhT, dcT


def _scalar_loss(x, W, b, h0, c0, acts, lengths, dy, dhT, dcT):
    """L = <dy, y> + <dhT, hT> + <dcT, cT>: random upstream gradients, never sum(y)."""

    def loss():
        (y, (hT, cT)), _ = FL.lstm_forward(x, W, b, h0, c0, acts, lengths)
        total = 0.0
        for u, v in ((dy, y), (dhT, hT), (dcT, cT)):
            if u is not None:
                total += float(np.sum(u * v))
        return total

    return loss


def _fd_check(case, rng, mutate_W=None):
    """Full central differences for x, W, b, h0, c0; returns the worst abs error per tensor."""
    T, N, n_in, H, acts, mode, lengths = case
    x, W, b, h0, c0 = _problem(rng, T, N, n_in, H)
    dy, dhT, dcT = _upstream(rng, T, N, H, mode)
    _, cache = FL.lstm_forward(x, W, b, h0, c0, acts, lengths)
    if mutate_W is not None:
        cache = cache._replace(W=mutate_W(cache.W))  # the backward reads W from the cache
    grads = FL.lstm_backward(dy, cache, dhT, dcT)
    loss = _scalar_loss(x, W, b, h0, c0, acts, lengths, dy, dhT, dcT)
    errors = {}
    for name, arr, g in zip(("dx", "dW", "db", "dh0", "dc0"), (x, W, b, h0, c0), grads):
        errors[name] = assert_close(g, numeric_grad(loss, arr), name)
    return errors


FD_CASES = [
    # T, N, I, H, activations, upstream, lengths
    (1, 1, 2, 3, None, "both", None),
    (1, 3, 2, 3, SMOOTH, "outputs", None),
    (2, 1, 3, 2, KINKY, "final", None),
    (2, 3, 2, 3, None, "outputs", None),
    (3, 3, 2, 3, SMOOTH, "final", None),
    (3, 1, 2, 3, None, "both", None),
    (7, 3, 2, 3, KINKY, "both", None),
    (7, 1, 3, 2, SMOOTH, "outputs", None),
    (7, 3, 2, 3, None, "both", [7, 2, 4]),
    (3, 3, 2, 2, SMOOTH, "final", [1, 3, 2]),
]


@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: f"T{c[0]}-N{c[1]}-{c[5]}-{'len' if c[6] else 'full'}")
def test_finite_differences(case, rng):
    _fd_check(case, rng)


@pytest.mark.parametrize("keep", "fion")
def test_dropped_gate_terms_mutant_is_caught(keep, rng):
    """dL/dh_{t-1} must sum all four gates: a mutant keeping one gate's term fails the FD check.

    The mutant runs the real kernels with the other three gates' h-columns of W
    zeroed in the cache: those columns are read only by the dL/dh_{t-1} line
    (dx reads the x-columns, dW reads hx and dL/dz), so this is exactly the
    cheat-sheet author's dropped terms.
    """
    gate = "fion".index(keep)

    def only_one_gate(W):
        H = W.shape[1]
        Wm = W.copy()
        for g in range(4):
            if g != gate:
                Wm[g, :, :H] = 0
        return Wm

    case = (3, 2, 2, 3, None, "both", None)
    _fd_check(case, np.random.default_rng(7))  # the same case passes unmutated
    with pytest.raises(AssertionError, match="dW|dh0|dx|db|dc0"):
        _fd_check(case, np.random.default_rng(7), mutate_W=only_one_gate)


def test_reference_mutant_differs_and_reference_agrees(rng):
    x, W, b, h0, c0 = _problem(rng, 4, 2, 3, 3)
    dy, dhT, dcT = _upstream(rng, 4, 2, 3, "both")
    _, _, saved = R.lstm_forward(x, W, b, h0, c0)
    good = R.lstm_backward(dy, saved, dhT, dcT)
    bad = R.lstm_backward(dy, saved, dhT, dcT, h_gates="f")
    assert not np.allclose(good[3], bad[3], atol=1e-4)
    _, cache = FL.lstm_forward(x, W, b, h0, c0)
    for g, r in zip(FL.lstm_backward(dy, cache, dhT, dcT), good):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("acts", [None, SMOOTH, KINKY], ids=["default", "smooth", "kinky"])
@pytest.mark.parametrize("lengths", [None, [5, 1, 3, 5]], ids=["full", "lengths"])
def test_matches_numpy_reference(acts, lengths, rng):
    T, N, n_in, H = 5, 4, 3, 6
    x, W, b, h0, c0 = _problem(rng, T, N, n_in, H)
    dy, dhT, dcT = _upstream(rng, T, N, H, "both")
    (y, (hT, cT)), cache = FL.lstm_forward(x, W, b, h0, c0, acts, lengths)
    yr, (hr, cr), saved = R.lstm_forward(x, W, b, h0, c0, acts, lengths)
    for a, r in ((y, yr), (hT, hr), (cT, cr)):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-13)
    for a, r in zip(FL.lstm_backward(dy, cache, dhT, dcT), R.lstm_backward(dy, saved, dhT, dcT)):
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)


def test_functional_reexports_lstm():
    if not hasattr(F, "lstm_forward"):
        pytest.skip("fastgrad.functional does not re-export the LSTM functions yet")
    assert F.lstm_forward is FL.lstm_forward and F.lstm_backward is FL.lstm_backward


def test_float32_agrees_with_float64(rng):
    T, N, n_in, H = 20, 4, 5, 8
    p64 = _problem(rng, T, N, n_in, H)
    p32 = [a.astype(np.float32) for a in p64]
    dy = rng.standard_normal((T, N, H))
    (y64, (_, c64)), k64 = FL.lstm_forward(*p64)
    (y32, (_, c32)), k32 = FL.lstm_forward(*p32)
    assert y32.dtype == np.float32 and k32.saved.z.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(c32, c64, rtol=1e-5, atol=2e-6)
    g64 = FL.lstm_backward(dy, k64)
    g32 = FL.lstm_backward(dy.astype(np.float32), k32)
    for a, r in zip(g32, g64):
        assert a.dtype == np.float32
        # reductions over T*N terms: tolerance scaled by the reduction length
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5 * np.sqrt(T * N) * np.abs(r).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [6, 20])
def test_one_and_two_threads_bitwise_equal(dtype, N, rng, threads):
    # work = T N 4H (H+I) is far above PARALLEL_MIN_WORK, so 2 threads run the parallel twin.
    # N = 20: products.recurrence_plan makes row blocks of 7, 7, 6 at 1 thread and 4 x 5 at 2
    T, n_in, H = 10, 8, 16
    x, W, b, h0, c0 = _problem(rng, T, N, n_in, H, dtype)
    dy = rng.standard_normal((T, N, H)).astype(dtype)
    lengths = ([10, 3, 10, 7, 1, 9] * 4)[:N]

    def run():
        (y, (hT, cT)), cache = FL.lstm_forward(x, W, b, h0, c0, None, lengths)
        return (y, hT, cT) + FL.lstm_backward(dy, cache, hT, cT)

    one = threads(1, run)
    two = threads(2, run)
    for a, c in zip(one, two):
        assert np.array_equal(a, c)


def _kernel_run(twin_fwd, twin_bwd, x, W, b, h0, c0, lengths, dy):
    """lstm_forward then lstm_backward called as kernels (NaN-filled scratch), for their saved state and dL/dz."""
    from fastgrad._checks import activation_code
    from fastgrad.kernels import lstm as klstm
    from fastgrad.kernels import products

    T, N, n_in = x.shape
    H = W.shape[1]
    G = 4 * H
    dt = x.dtype
    codes = np.array([activation_code(a, "test") for a in ("sigmoid", "sigmoid", "sigmoid", "tanh", "tanh")], np.int64)
    out = klstm.LSTMOut(np.empty((T, N, H), dt), np.empty((N, H), dt), np.empty((N, H), dt))
    saved = klstm.LSTMSaved(np.empty((T, N, H + n_in), dt), np.empty((T, N, 4, H), dt), np.empty((T, N, 4, H), dt),
                            np.empty((T + 1, N, H), dt), np.empty((T, N, H), dt))
    plan_proj = products.gemm_plan(T * N, G, n_in, dt)
    plan_rec = products.recurrence_plan(N, G, H, dt)
    sizes = [*products.packed_sizes(plan_proj, dt), products.recurrence_panels_size(plan_rec, H), products.packed_b_size(plan_rec, dt)]
    buffers = klstm.LSTMBuffers(*(np.full(size, np.nan, dt) for size in sizes))
    twin_fwd(out, saved, klstm.LSTMInputs(x, h0, c0, lengths, codes), W, b, buffers, plan_proj, plan_rec)
    plan_brec = products.recurrence_plan(N, H, G, dt)
    plan_dx = products.gemm_plan(T * N, n_in, G, dt)
    plan_dw = products.gemm_plan(G, H + n_in, T * N, dt)
    sizes = [*products.packed_sizes(plan_dx, dt), *products.packed_sizes(plan_dw, dt), products.recurrence_panels_size(plan_brec, G),
             products.packed_b_size(plan_brec, dt), products.recurrence_panels_size(plan_brec, H)]
    scratch = klstm.LSTMScratch(np.full((T, N, 4, H), np.nan, dt), np.full((N, H), np.nan, dt), np.full((N, H), np.nan, dt),
                                np.full((N, G), np.nan, dt), *(np.full(size, np.nan, dt) for size in sizes))
    grads = klstm.LSTMGrads(np.zeros((T, N, n_in), dt), np.zeros_like(W), np.zeros_like(b), np.zeros((N, H), dt), np.zeros((N, H), dt))
    zeros = np.zeros((N, H), dt)
    twin_bwd(grads, scratch, klstm.LSTMUpstream(dy, zeros, zeros), saved, W, lengths, codes, plan_brec, plan_dx, plan_dw)
    return saved, scratch, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T, N, n_in, H", [(1, 1, 1, 1), (3, 7, 5, 9), (4, 13, 3, 40), (2, 6, 300, 5), (2, 3, 2, 70),
                                           (3, 16, 4, 9), (2, 31, 3, 40)])
def test_gate_products_equal_their_plain_twins_on_edge_shapes(dtype, T, N, n_in, H):
    """The LSTM's products on the product core (edge tiles; N = 7, 13 short row blocks; I = 300
    two KC blocks in the projection; 4H = 280 two KC blocks in the backward recurrence) against
    kernels.lstm.gate_products_reference and gate_backward_products_reference.  With AVX-512
    the recurrence runs blocks of 7 and 6 rows at N = 13, two full tall tiles of 8 at N = 16
    and 8, 8, 8, 7 at N = 31 (products.recurrence_plan)."""
    from fastgrad.kernels import lstm as klstm

    rng = np.random.default_rng(T * 1000 + N * 100 + n_in + H)
    x, W, b, h0, c0 = _problem(rng, T, N, n_in, H, dtype)
    lengths = rng.integers(1, T + 1, N).astype(np.int64)
    dy = rng.standard_normal((T, N, H)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for fwd, bwd in ((klstm.lstm_forward.serial, klstm.lstm_backward.serial), (klstm.lstm_forward.parallel, klstm.lstm_backward.parallel)):
        saved, scratch, grads = _kernel_run(fwd, bwd, x, W, b, h0, c0, lengths, dy)
        z = np.full_like(saved.z, np.nan)
        klstm.gate_products_reference(z, saved.hx, W, b)
        np.testing.assert_allclose(saved.z, z, rtol=tol, atol=tol * np.sqrt(H + n_in) * np.abs(z).max(), err_msg="z")
        dz = scratch.dz
        assert np.all(dz[np.arange(T)[:, None] >= lengths[None, :]] == 0)  # no gradient at padded steps
        dhx = np.full_like(saved.hx, np.nan)
        dW = np.zeros_like(W)
        db = np.zeros_like(b)
        klstm.gate_backward_products_reference(dhx, dW, db, dz, saved.hx, W)
        for name, got, want, depth in (("dW", grads.dW, dW, T * N), ("db", grads.db, db, T * N),
                                       ("dx", grads.dx, dhx[:, :, H:], 4 * H), ("dh0", grads.dh0, dhx[0, :, :H], 4 * H)):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(depth) * max(1.0, np.abs(want).max()), err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thousand_steps_stay_finite(dtype, rng):
    T, N, n_in, H = 1000, 2, 3, 4
    x, W, b, h0, c0 = _problem(rng, T, N, n_in, H, dtype, scale=3.0)
    (y, (hT, cT)), cache = FL.lstm_forward(x * 3, W, b, h0, c0)
    grads = FL.lstm_backward(np.ones_like(y), cache, hT, cT)
    for a in (y, hT, cT) + grads:
        assert np.all(np.isfinite(a))
    assert np.abs(y).max() <= 1.0


def test_lengths_semantics(rng):
    """Padded steps: outputs 0, final state at each sequence's own end, no gradient in or out."""
    T, N, n_in, H = 6, 3, 2, 4
    x, W, b, h0, c0 = _problem(rng, T, N, n_in, H)
    lengths = np.array([6, 2, 4])
    (y, (hT, cT)), cache = FL.lstm_forward(x, W, b, h0, c0, lengths=lengths)
    x2 = x.copy()
    for n, L in enumerate(lengths):
        assert np.all(y[L:, n] == 0)
        x2[L:, n] = 99.0
        (ys, (hs, cs)), _ = FL.lstm_forward(x[:L, n : n + 1], W, b, h0[n : n + 1], c0[n : n + 1])
        np.testing.assert_allclose(y[:L, n], ys[:, 0], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(hT[n], hs[0], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(cT[n], cs[0], rtol=1e-13, atol=1e-14)
    (y2, _), _ = FL.lstm_forward(x2, W, b, h0, c0, lengths=lengths)
    assert np.array_equal(y, y2)
    dy = rng.standard_normal((T, N, H))
    dy2 = dy.copy()
    dy2[4:, 1] = 1e3  # gradient on padded outputs is ignored
    g1 = FL.lstm_backward(dy, cache)
    g2 = FL.lstm_backward(dy2, cache)
    for a, c in zip(g1, g2):
        assert np.array_equal(a, c)
    assert np.all(g1[0][2:, 1] == 0) and np.all(g1[0][4:, 2] == 0)


# --------------------------------------------------------------------------
# layer
# --------------------------------------------------------------------------


def _layer_fd(layer, x, lengths, rng, state):
    out = layer.forward(x, state=state, lengths=lengths)
    u = rng.standard_normal(out.shape)
    uh = rng.standard_normal(layer.state[0].shape)
    uc = rng.standard_normal(layer.state[1].shape)
    layer.zero_grad()
    dx = layer.backward(u, dstate=(uh, uc))
    dh0, dc0 = layer.state_grad
    h0, c0 = state

    def loss():
        y = layer.forward(x, state=(h0, c0), lengths=lengths)
        return float(np.sum(u * y) + np.sum(uh * layer.state[0]) + np.sum(uc * layer.state[1]))

    worst = assert_close(dx, numeric_grad(loss, x), "dx")
    worst = max(worst, assert_close(dh0, numeric_grad(loss, h0), "dh0"))
    worst = max(worst, assert_close(dc0, numeric_grad(loss, c0), "dc0"))
    for name, p in layer.params.items():
        worst = max(worst, assert_close(layer.grads[name], numeric_grad(loss, p), name))
    return worst


@pytest.mark.parametrize(
    "num_layers,bidirectional,batch_first,return_sequences,lengths",
    [
        (2, True, False, True, [4, 2, 3]),
        (2, True, True, False, [1, 4, 3]),
        (1, True, False, False, None),
        (2, False, True, True, [3, 4, 2]),
    ],
)
def test_layer_finite_differences(num_layers, bidirectional, batch_first, return_sequences, lengths, rng):
    T, N, n_in, H = 4, 3, 2, 2
    acts = SMOOTH if num_layers == 1 else None
    layer = LSTM(n_in, H, num_layers, bidirectional, batch_first, return_sequences, acts, dtype=np.float64, seed=3)
    S = num_layers * layer.num_directions
    x = rng.standard_normal((N, T, n_in) if batch_first else (T, N, n_in))
    state = (rng.standard_normal((S, N, H)) * 0.5, rng.standard_normal((S, N, H)) * 0.5)
    _layer_fd(layer, x, lengths, rng, state)


def test_layer_lengths_match_unpadded_sequences(rng):
    T, N, n_in, H = 5, 3, 2, 3
    layer = LSTM(n_in, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    x = rng.standard_normal((T, N, n_in))
    lengths = np.array([5, 2, 4])
    y = layer(x, lengths=lengths)
    hn, cn = (s.copy() for s in layer.state)
    for n, L in enumerate(lengths):
        ys = layer(x[:L, n : n + 1])
        np.testing.assert_allclose(y[:L, n], ys[:, 0], rtol=1e-12, atol=1e-14)
        assert np.all(y[L:, n] == 0)
        np.testing.assert_allclose(hn[:, n], layer.state[0][:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(cn[:, n], layer.state[1][:, 0], rtol=1e-12, atol=1e-14)


def test_layer_matches_pytorch(rng):
    torch = needs("torch")
    T, N, n_in, H, layers = 5, 3, 4, 6, 2
    ref = torch.nn.LSTM(n_in, H, num_layers=layers, bidirectional=True).double()
    layer = LSTM(n_in, H, num_layers=layers, bidirectional=True, dtype=np.float64)
    order = [1, 0, 3, 2]  # torch gates (i, f, g, o) -> ours (f, i, o, n)
    for k in range(layers):
        for suffix in ("", "_reverse"):
            w_ih = getattr(ref, f"weight_ih_l{k}{suffix}").detach().numpy().reshape(4, H, -1)[order]
            w_hh = getattr(ref, f"weight_hh_l{k}{suffix}").detach().numpy().reshape(4, H, H)[order]
            bias = (getattr(ref, f"bias_ih_l{k}{suffix}") + getattr(ref, f"bias_hh_l{k}{suffix}")).detach().numpy()
            layer.params[f"W_l{k}{suffix}"][...] = np.concatenate([w_hh, w_ih], axis=2)
            layer.params[f"b_l{k}{suffix}"][...] = bias.reshape(4, H)[order]
    x = rng.standard_normal((T, N, n_in))
    h0 = rng.standard_normal((2 * layers, N, H))
    c0 = rng.standard_normal((2 * layers, N, H))
    y = layer(x, state=(h0, c0))
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True)
    yt, (hnt, cnt) = ref(xt, (h0t, c0t))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.state[0], hnt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.state[1], cnt.detach().numpy(), rtol=1e-10, atol=1e-12)
    u = rng.standard_normal(y.shape)
    dx = layer.backward(u)
    yt.backward(torch.tensor(u))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(layer.state_grad[0], h0t.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(layer.state_grad[1], c0t.grad.numpy(), rtol=1e-9, atol=1e-11)
    w_hh_grad = ref.weight_hh_l1_reverse.grad.numpy().reshape(4, H, H)[order]
    np.testing.assert_allclose(layer.grads["W_l1_reverse"][:, :, :H], w_hh_grad, rtol=1e-9, atol=1e-11)


def test_layer_config_round_trip_and_shapes():
    layer = LSTM(5, 4, num_layers=2, bidirectional=True, batch_first=True, return_sequences=False,
                 activations={"h": "hard_tanh"}, forget_bias=0.5, dtype=np.float64, seed=0)
    config = layer.get_config()
    clone = type(layer)(**json.loads(json.dumps(config)))
    assert clone.get_config() == config
    assert {k: v.shape for k, v in clone.params.items()} == {k: v.shape for k, v in layer.params.items()}
    assert sorted(layer.params) == ["W_l0", "W_l0_reverse", "W_l1", "W_l1_reverse", "b_l0", "b_l0_reverse", "b_l1", "b_l1_reverse"]
    assert layer.params["W_l0"].shape == (4, 4, 9) and layer.params["W_l1"].shape == (4, 4, 12)
    assert layer.output_shape((7, 5)) == (8,)
    assert LSTM(5, 4, bidirectional=True).output_shape((7, 5)) == (7, 8)
    out = layer(np.zeros((3, 7, 5)))
    assert out.shape == (3, 8) and out.dtype == np.float64
    assert layer.state[0].shape == (4, 3, 4)
    dx = layer.backward(np.ones((3, 8)))
    assert dx.shape == (3, 7, 5) and layer.state_grad[1].shape == (4, 3, 4)


def test_layer_init_seed_and_forget_bias():
    a = LSTM(3, 8, seed=5)
    b = LSTM(3, 8, seed=5)
    assert np.array_equal(a.params["W_l0"], b.params["W_l0"])
    assert a.params["W_l0"].dtype == np.float32
    assert np.abs(a.params["W_l0"]).max() <= 1 / np.sqrt(8)
    assert np.all(a.params["b_l0"][0] == 1.0)
    assert np.abs(a.params["b_l0"][1:]).max() <= 1 / np.sqrt(8)
    assert np.all(LSTM(3, 8, forget_bias=0.0).params["b_l0"][0] == 0.0)


def test_layer_backward_accumulates_and_batch_first_agrees(rng):
    x = rng.standard_normal((5, 2, 3))
    tf = LSTM(3, 4, dtype=np.float64, seed=2)
    bf = LSTM(3, 4, dtype=np.float64, seed=2, batch_first=True)
    y = tf(x)
    np.testing.assert_array_equal(bf(x.transpose(1, 0, 2)), y.transpose(1, 0, 2))
    u = rng.standard_normal(y.shape)
    tf.backward(u)
    once = tf.grads["W_l0"].copy()
    tf.backward(u)
    np.testing.assert_allclose(tf.grads["W_l0"], 2 * once, rtol=1e-14)
    bf.backward(u.transpose(1, 0, 2))
    np.testing.assert_array_equal(bf.grads["W_l0"], once)


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def _ok(rng, dtype=np.float64):
    x, W, b, h0, c0 = _problem(rng, 3, 2, 2, 3, dtype)
    return x, W, b, h0, c0


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (lambda p: {**p, "x": p["x"][0]}, ValueError, "x must be 3-D"),
        (lambda p: {**p, "x": p["x"][:0]}, ValueError, "zero time steps"),
        (lambda p: {**p, "x": p["x"][:, :0]}, ValueError, "empty batch"),
        (lambda p: {**p, "W": p["W"][:3]}, ValueError, r"W must have shape \(4, H, H\+I\)"),
        (lambda p: {**p, "W": p["W"][:, :, :4]}, ValueError, r"W.shape\[2\]=4 must be H\+I"),
        (lambda p: {**p, "b": p["b"][:, :2]}, ValueError, r"b must have shape \(4, 3\)"),
        (lambda p: {**p, "h0": p["h0"][:1]}, ValueError, r"h0 must have shape \(2, 3\)"),
        (lambda p: {**p, "c0": p["c0"][None]}, ValueError, "c0 must be 2-D"),
        (lambda p: {**p, "activations": {"n": "swish"}}, ValueError, "unknown activations\\['n'\\] 'swish'"),
        (lambda p: {**p, "activations": {"g": "tanh"}}, ValueError, "unknown activations key 'g'"),
        (lambda p: {**p, "activations": "tanh"}, TypeError, "activations must be a dict"),
        (lambda p: {**p, "x": p["x"].astype(np.int64)}, TypeError, "x must be a float32/float64 array"),
        (lambda p: {**p, "W": p["W"].astype(np.float32)}, TypeError, "W has dtype float32 but x has dtype float64"),
        (lambda p: {**p, "x": np.where(p["x"] > 1, np.nan, p["x"])}, ValueError, "x contains NaN"),
        (lambda p: {**p, "lengths": [3, 0]}, ValueError, r"lengths must be in \[1, T=3\]"),
        (lambda p: {**p, "lengths": [3, 4]}, ValueError, r"lengths must be in \[1, T=3\]"),
        (lambda p: {**p, "lengths": [3.0, 2.0]}, TypeError, "lengths must be integers"),
        (lambda p: {**p, "lengths": [3]}, ValueError, r"lengths must have shape \(2,\)"),
    ],
)
def test_forward_bad_input(change, exc, match, rng):
    x, W, b, h0, c0 = _ok(rng)
    p = change({"x": x, "W": W, "b": b, "h0": h0, "c0": c0})
    with pytest.raises(exc, match=match) as info:
        FL.lstm_forward(**p)
    assert len(str(info.value)) < 300 and "lstm_forward" in str(info.value)


def test_backward_bad_input(rng):
    x, W, b, h0, c0 = _ok(rng)
    (y, (hT, cT)), cache = FL.lstm_forward(x, W, b, h0, c0)
    with pytest.raises(ValueError, match="call lstm_forward first"):
        FL.lstm_backward(y, None)
    with pytest.raises(TypeError, match="LSTMCache"):
        FL.lstm_backward(y, (1, 2))
    with pytest.raises(ValueError, match=r"dy must have shape \(3, 2, 3\)"):
        FL.lstm_backward(y[:2], cache)
    with pytest.raises(ValueError, match=r"dhT must have shape \(2, 3\)"):
        FL.lstm_backward(None, cache, dhT=hT[:1])
    with pytest.raises(ValueError, match="dcT contains NaN"):
        FL.lstm_backward(None, cache, dcT=cT * np.nan)
    with pytest.raises(TypeError, match="dy must be a float32/float64 array"):
        FL.lstm_backward(y.astype(np.int32), cache)
    dx, dW, _, dh0, _ = FL.lstm_backward(None, cache)  # no upstream gradient: zeros
    assert not dx.any() and not dW.any() and not dh0.any()


def test_layer_bad_input(rng):
    layer = LSTM(2, 3, num_layers=2)
    with pytest.raises(ValueError, match="called before forward"):
        layer.backward(np.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match=r"x.shape\[-1\]=4 does not match input_size=2"):
        layer(np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match="zero time steps"):
        layer(np.zeros((0, 2, 2)))
    with pytest.raises(ValueError, match=r"state h0 must have shape \(2, 2, 3\)"):
        layer(np.zeros((3, 2, 2)), state=(np.zeros((1, 2, 3)), np.zeros((2, 2, 3))))
    with pytest.raises(TypeError, match="state must be a pair"):
        layer(np.zeros((3, 2, 2)), state=np.zeros((2, 2, 3)))
    with pytest.raises(TypeError, match="x must be a float32/float64 array"):
        layer(np.zeros((3, 2, 2), np.int64))
    with pytest.raises(ValueError, match="unknown activations"):
        LSTM(2, 3, activations={"f": "nope"})
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        LSTM(2, 0)
    with pytest.raises(TypeError, match="bidirectional must be True or False"):
        LSTM(2, 3, bidirectional="yes")
    layer(np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match=r"dy must have shape \(3, 2, 3\)"):
        layer.backward(np.zeros((3, 2, 4)))
