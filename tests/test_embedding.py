"""Embedding: lookup and scatter-add gradient against the NumPy oracle, finite differences, threads, PyTorch."""

import numpy as np
import pytest
from needs import needs
from fd import assert_close, numeric_grad

import fastgrad as fg
import fastgrad.functional as F
from fastgrad import _jit
from fastgrad.kernels import embedding as kemb
from fastgrad.reference import embedding, embedding_grad

# (num_embeddings, dim, index shape, padding_idx)
GRID = [
    (5, 3, (4,), None),
    (5, 3, (2, 6), 0),
    (7, 1, (3, 2, 2), -1),  # negative: counts from the end, as PyTorch
    (1, 4, (5,), None),  # one row, read by every position
    (6, 2, (1,), 3),
]


def _indices(rng, V, shape, pad):
    idx = rng.integers(0, V, shape)
    if pad is not None:
        idx.reshape(-1)[0] = pad % V  # the padding row is read at least once
    idx.reshape(-1)[-1] = idx.reshape(-1)[0]  # and some row twice
    return idx


@pytest.mark.parametrize("V,D,shape,pad", GRID)
def test_forward_backward_match_reference(V, D, shape, pad, rng):
    W = rng.standard_normal((V, D))
    idx = _indices(rng, V, shape, pad)
    y, cache = F.embedding_forward(idx, W, pad)
    assert y.shape == shape + (D,)
    assert np.array_equal(y, embedding(idx, W))
    dy = rng.standard_normal(y.shape)
    dW = F.embedding_backward(dy, cache)
    np.testing.assert_allclose(dW, embedding_grad(dy, idx, W, None if pad is None else pad % V), rtol=1e-13, atol=1e-14)
    if pad is not None:
        assert np.all(dW[pad % V] == 0)


@pytest.mark.parametrize("V,D,shape,pad", GRID)
def test_finite_differences(V, D, shape, pad, rng):
    W = rng.standard_normal((V, D))
    idx = _indices(rng, V, shape, pad)
    y, cache = F.embedding_forward(idx, W, pad)
    u = rng.standard_normal(y.shape)
    dW = F.embedding_backward(u, cache)
    numeric = numeric_grad(lambda: float(np.sum(u * F.embedding_forward(idx, W, pad)[0])), W)
    if pad is not None:
        numeric[pad % V] = 0  # by definition the padding row gets no gradient (PyTorch's padding_idx)
    assert_close(dW, numeric, "W")


def test_repeated_indices_add_in_a_fixed_order(threads):
    """Every position reads one of 3 rows: the sums are long, yet bitwise equal at 1 and 2 threads."""
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        W = rng.standard_normal((3, 64)).astype(dtype)
        idx = rng.integers(0, 3, (400, 5))
        dy = rng.standard_normal(idx.shape + (64,)).astype(dtype)

        def run():
            y, cache = F.embedding_forward(idx, W)
            return y, F.embedding_backward(dy, cache)

        one, two = threads(1, run), threads(2, run)
        assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
        # the fixed order is the positions' own: sequential sums in index order
        want = np.zeros_like(W)
        for s, v in enumerate(idx.reshape(-1)):
            want[v] += dy.reshape(-1, 64)[s]
        assert np.array_equal(one[1], want)


def test_float32_matches_float64(rng):
    W = rng.standard_normal((9, 4))
    idx = rng.integers(0, 9, (6, 5))
    dy = rng.standard_normal((6, 5, 4))
    out = []
    for dt in (np.float32, np.float64):
        y, cache = F.embedding_forward(idx, W.astype(dt), 2)
        out.append((y, F.embedding_backward(dy.astype(dt), cache)))
    for a, b in zip(out[0], out[1]):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.sqrt(30))


def test_every_row_written_and_padding_untouched():
    """The parallel twin writes every output row (NaN sentinel) and never adds into the padding row."""
    rng = np.random.default_rng(2)
    W = rng.standard_normal((4, 3))
    idx = np.array([0, 3, 3, 1, 0], np.int64)
    for twin in ("serial", "parallel"):
        y = np.full((5, 3), np.nan)
        getattr(kemb.embedding_forward, twin)(y, idx, W)
        assert np.array_equal(y, W[idx])
        dW = np.full((4, 3), 7.0)
        order = np.argsort(idx, kind="stable").astype(np.int64)
        start = np.concatenate([[0], np.cumsum(np.bincount(idx, minlength=4))]).astype(np.int64)
        getattr(kemb.embedding_backward, twin)(dW, np.ones((5, 3)), order, start, 3)
        assert np.array_equal(dW[:, 0], [9.0, 8.0, 7.0, 7.0])


def test_integer_dtypes_are_accepted_and_input_unchanged(rng):
    W = rng.standard_normal((300, 2))
    for dt in (np.int8, np.uint8, np.int32, np.uint64, np.int64):
        idx = np.array([[1, 2], [3, 4]], dtype=dt)
        before = idx.copy()
        y, _ = F.embedding_forward(idx, W)
        assert np.array_equal(y, W[idx.astype(np.int64)]) and np.array_equal(idx, before)
    y, _ = F.embedding_forward([[0, 299]], W)  # a list of ints
    assert y.shape == (1, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 300\)"):
        F.embedding_forward(np.array([2**63], np.uint64), W)  # not wrapped into range by a conversion


def audit_ops(dtype):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((50, 40)).astype(dtype)
    idx = rng.integers(0, 50, (60, 30))
    dy = np.cos(rng.standard_normal(idx.shape + (40,))).astype(dtype)

    def op():
        y, cache = F.embedding_forward(idx, W, padding_idx=7)
        return y, F.embedding_backward(dy, cache)

    assert dy.size >= _jit.PARALLEL_MIN_WORK
    return [("embedding", op)]


# -- the layer -------------------------------------------------------------------------------
def test_layer_init_padding_and_gradient(rng):
    layer = fg.Embedding(6, 4, padding_idx=-2, dtype=np.float64, seed=3)
    assert layer.padding_idx == 4 and np.all(layer.params["W"][4] == 0)
    assert abs(np.std(fg.Embedding(200, 50, seed=0).params["W"]) - 1) < 0.05  # N(0, 1) as PyTorch
    x = np.array([[4, 1, 1], [0, 4, 5]])
    y = layer(x)
    assert y.shape == (2, 3, 4) and np.all(y[0, 0] == 0)
    assert layer.backward(np.ones_like(y)) is None  # indices have no gradient
    assert np.all(layer.grads["W"][4] == 0) and np.all(layer.grads["W"][1] == 2)
    assert fg.gradcheck(fg.Embedding(5, 3, seed=1), np.array([[0, 1, 1], [4, 2, 0]])).ok
    assert layer.output_shape((7,)) == (7, 4)


def test_embedding_model_fits_with_integer_inputs():
    """Sequential.fit / predict / evaluate pass integer x through to a first Embedding."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (200, 3))
    y = (x[:, 0] >= 5).astype(np.int64)  # the class of the first token
    model = fg.Sequential(fg.Embedding(10, 8, seed=0), fg.Dropout(0.1, seed=1), fg.Flatten(), fg.Dense(24, 2, seed=2))
    history = model.fit(x, y, fg.CrossEntropyLoss(), fg.Adam(model, 3e-2), epochs=15, batch_size=20, progress=False)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    loss, acc = model.evaluate(x, y, fg.CrossEntropyLoss())
    assert acc > 0.95
    assert model.predict(x).shape == (200, 2)
    report = fg.gradcheck(model.eval(), x[:3])
    assert [r.name for r in report.rows] == ["0.W", "3.W", "3.b"]
    with pytest.raises(TypeError, match="integer indices"):
        model.fit(x.astype(np.float32), y, fg.CrossEntropyLoss(), fg.Adam(model), progress=False)


def test_embedding_matches_torch(rng):
    torch = needs("torch")
    ours = fg.Embedding(8, 5, padding_idx=2, dtype=np.float64, seed=0)
    ref = torch.nn.Embedding(8, 5, padding_idx=2, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(ours.params["W"]))
    x = rng.integers(0, 8, (3, 4, 2))
    x[0, 0, 0] = 2
    dy = rng.standard_normal((3, 4, 2, 5))
    yt = ref(torch.from_numpy(x))
    yt.backward(torch.from_numpy(dy))
    y = ours(x)
    ours.backward(dy)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=0)
    np.testing.assert_allclose(ours.grads["W"], ref.weight.grad.numpy(), rtol=1e-9, atol=1e-15)
