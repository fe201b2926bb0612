"""Every public entry point refuses bad input with a clear ValueError/TypeError.

Each case names the parameter that must appear in the message.  Messages stay
under 300 characters, never come from numba, and inputs are not modified.
"""

import numpy as np
import pytest

import fastgrad as fg
import fastgrad.functional as F

R = np.random.default_rng(0)
X = R.standard_normal((3, 4))
W = R.standard_normal((2, 4))
B = R.standard_normal(2)
NAN = X.copy()
NAN[1, 2] = np.nan
Y, CACHE = F.dense_forward(X, W, B)
P = F.softmax(X)

CASES = [
    # (call, exception, words that must appear in the message)
    (lambda: F.dense_forward(X[0], W, B), ValueError, ["x", "2-D"]),
    (lambda: F.dense_forward(X, W[:, :3], B), ValueError, ["W.shape[1]=3", "x.shape[1]=4"]),
    (lambda: F.dense_forward(X, W, B[:1]), ValueError, ["b", "(2)"]),
    (lambda: F.dense_forward(X.astype(int), W, B), TypeError, ["x", "int64"]),
    (lambda: F.dense_forward(X > 0, W, B), TypeError, ["x", "bool"]),
    (lambda: F.dense_forward(X.astype(np.float16), W, B), TypeError, ["x", "float16"]),
    (lambda: F.dense_forward(X.astype(complex), W, B), TypeError, ["x", "complex"]),
    (lambda: F.dense_forward(X.astype(object), W, B), TypeError, ["x", "object"]),
    (lambda: F.dense_forward(None, W, B), TypeError, ["x", "None"]),
    (lambda: F.dense_forward([["a", "b"]], W, B), TypeError, ["x"]),
    (lambda: F.dense_forward("abc", W, B), TypeError, ["x", "str"]),
    (lambda: F.dense_forward(NAN, W, B), ValueError, ["x", "NaN"]),
    (lambda: F.dense_forward(X, W.astype(np.float32), B), TypeError, ["W", "float32", "float64"]),
    (lambda: F.dense_forward(X, W, B, "swish"), ValueError, ["activation", "swish", "relu"]),
    (lambda: F.dense_forward(X, W, B, None), TypeError, ["activation"]),
    (lambda: F.dense_forward(np.zeros((0, 4)), W, B), ValueError, ["x", "empty"]),
    (lambda: F.dense_backward(Y[:2], CACHE), ValueError, ["dy", "(3, 2)"]),
    (lambda: F.dense_backward(Y, None), TypeError, ["cache"]),
    (lambda: F.softmax(X, axis=2), ValueError, ["axis=2"]),
    (lambda: F.softmax(X, axis=1.0), TypeError, ["axis"]),
    (lambda: F.softmax(np.zeros((3, 0))), ValueError, ["length 0"]),
    (lambda: F.softmax_backward(X[:2], P), ValueError, ["y", "(2, 4)"]),
    (lambda: F.log_softmax(NAN), ValueError, ["x", "NaN"]),
    (lambda: F.cross_entropy(X, np.array([0, 1, 4])), ValueError, ["labels", "[0, 4)"]),
    (lambda: F.cross_entropy(X, np.array([0, 1])), ValueError, ["target", "(3,)"]),
    (lambda: F.cross_entropy(X, np.array([True, False, True])), TypeError, ["target", "bool"]),
    (lambda: F.cross_entropy(X, -P), ValueError, ["target", ">= 0"]),
    (lambda: F.cross_entropy(X, None), TypeError, ["target", "None"]),
    (lambda: F.cross_entropy(X[0], np.array([0])), ValueError, ["logits", "2-D"]),
    (lambda: F.activation_forward(X, "nope"), ValueError, ["activation", "nope"]),
    (lambda: fg.Dense(0, 3), ValueError, ["in_features", ">= 1"]),
    (lambda: fg.Dense(2.5, 3), TypeError, ["in_features"]),
    (lambda: fg.Dense(4, 3, activation="bogus"), ValueError, ["activation", "bogus"]),
    (lambda: fg.Dense(4, 3, dtype=np.int32), TypeError, ["dtype"]),
    (lambda: fg.Dense(4, 3, bias="yes"), TypeError, ["bias"]),
    (lambda: fg.Dense(4, 3)(np.ones((2, 5))), ValueError, ["Dense.forward", "x.shape[1]=5", "in_features=4"]),
    (lambda: fg.Dense(4, 3)(np.ones(4)), ValueError, ["Dense.forward", "x", "2-D"]),
    (lambda: fg.Dense(4, 3)(np.ones((2, 4, 1))), ValueError, ["Dense.forward", "x.shape[2]=1", "in_features=4"]),
    (lambda: fg.Dense(4, 3).backward(np.ones((2, 3))), ValueError, ["Dense.backward", "before forward"]),
    (lambda: fg.Softmax().backward(np.ones((2, 3))), ValueError, ["Softmax.backward", "before forward"]),
    (lambda: fg.Activation("tanhh"), ValueError, ["name", "tanhh"]),
    (lambda: fg.Softmax(axis="last"), TypeError, ["axis"]),
    (lambda: fg.Sequential(fg.Dense(4, 3), "relu"), TypeError, ["layer 1"]),
    (lambda: fg.SGD(fg.Dense(4, 3), lr=0), ValueError, ["lr", "> 0"]),
    (lambda: fg.SGD(fg.Dense(4, 3), lr=float("nan")), ValueError, ["lr", "finite"]),
    (lambda: fg.SGD(fg.Dense(4, 3), lr=0.1, momentum=-1), ValueError, ["momentum"]),
    (lambda: fg.SGD(fg.Dense(4, 3), lr=0.1, nesterov=True), ValueError, ["nesterov", "momentum"]),
    (lambda: fg.SGD("model", lr=0.1), TypeError, ["model"]),
    (lambda: fg.SGD(fg.Softmax(), lr=0.1), ValueError, ["no parameters"]),
    (lambda: fg.Adam(fg.Dense(4, 3), betas=(0.9, 1.0)), ValueError, ["betas[1]", "< 1"]),
    (lambda: fg.Adam(fg.Dense(4, 3), betas=0.9), TypeError, ["betas"]),
    (lambda: fg.Adam(fg.Dense(4, 3), eps=-1), ValueError, ["eps"]),
    (lambda: fg.clip_grad_norm(fg.Dense(4, 3), 0), ValueError, ["max_norm", "> 0"]),
    (lambda: fg.MSELoss()(np.ones((2, 3)), np.ones((3, 2))), ValueError, ["target.shape", "pred.shape"]),
    (lambda: fg.MSELoss(reduction="avg"), ValueError, ["reduction"]),
    (lambda: fg.CrossEntropyLoss().backward(), ValueError, ["before"]),
    (lambda: fg.set_num_threads(0), ValueError, ["n", ">= 1"]),
    (lambda: fg.set_num_threads(10_000), ValueError, ["NUMBA_NUM_THREADS"]),
    (lambda: fg.gradcheck("layer", X), TypeError, ["layer_or_model"]),
    (lambda: fg.gradcheck(fg.Dense(4, 2), X, eps=0), ValueError, ["eps"]),
    (lambda: fg.save("model", "/tmp/x.npz"), TypeError, ["model"]),
    (lambda: fg.Sequential(fg.Dense(4, 3)).fit(X, [0, 1], fg.MSELoss(), None), TypeError, ["optimizer"]),
    (lambda: fg.Sequential(fg.Dense(4, 3)).fit(X, [0, 1], "mse", fg.SGD(fg.Dense(4, 3), 0.1)), TypeError, ["loss"]),
    (lambda: fg.warmup(dtypes=("float16",)), TypeError, ["dtypes"]),
    # embedding, dropout, normalisation (issue 17)
    (lambda: F.embedding_forward(X, W), TypeError, ["indices", "integer", "float64"]),
    (lambda: F.embedding_forward(np.array([0, 4]), W), ValueError, ["indices", "[0, 2)", "4"]),
    (lambda: F.embedding_forward(np.array([0]), W, padding_idx=2), ValueError, ["padding_idx", "[-2, 2)"]),
    (lambda: F.embedding_forward(np.array([0]), W, padding_idx=1.0), TypeError, ["padding_idx"]),
    (lambda: F.embedding_forward(np.zeros(0, np.int64), W), ValueError, ["indices", "empty"]),
    (lambda: fg.Embedding(5, 3)(np.array([[True, False]])), TypeError, ["Embedding.forward", "x", "bool"]),
    (lambda: fg.Embedding(5, 3)(np.array([1.0, 2.0])), TypeError, ["Embedding.forward", "x", "float64"]),
    (lambda: fg.Embedding(5, 3)(np.array([-1, 2])), ValueError, ["Embedding.forward", "[0, 5)", "-1"]),
    (lambda: fg.Embedding(5, 3)(None), TypeError, ["Embedding.forward", "x", "None"]),
    (lambda: fg.Embedding(0, 3), ValueError, ["num_embeddings", ">= 1"]),
    (lambda: fg.Embedding(5, 3, padding_idx=5), ValueError, ["padding_idx", "[-5, 5)"]),
    (lambda: fg.Embedding(5, 3).backward(np.ones((2, 3))), ValueError, ["Embedding.backward", "before forward"]),
    (lambda: fg.Dropout(1.5), ValueError, ["p", "<= 1"]),
    (lambda: fg.Dropout("0.5"), TypeError, ["p"]),
    (lambda: fg.Dropout(0.5, seed=-1), ValueError, ["seed"]),
    (lambda: F.dropout_forward(X, 0.5, rng=3), TypeError, ["rng", "Generator"]),
    (lambda: F.dropout_forward(X, 0.5, training="yes"), TypeError, ["training"]),
    (lambda: F.dropout_forward(NAN, 0.5), ValueError, ["x", "NaN"]),
    (lambda: fg.LayerNorm(0), ValueError, ["normalized_shape", ">= 1"]),
    (lambda: fg.LayerNorm("4"), TypeError, ["normalized_shape"]),
    (lambda: fg.LayerNorm(4, eps=-1), ValueError, ["eps", ">= 0"]),
    (lambda: fg.LayerNorm(5)(X), ValueError, ["LayerNorm.forward", "(5,)", "(3, 4)"]),
    (lambda: F.layer_norm_forward(X, 4, np.ones(4), None), ValueError, ["gamma", "beta", "both"]),
    (lambda: F.layer_norm_forward(X, 4, np.ones(3), np.ones(3)), ValueError, ["gamma", "(4)"]),
    (lambda: F.layer_norm_forward(X, 4, np.ones(4, np.float32), np.ones(4)), TypeError, ["gamma", "float32"]),
    (lambda: fg.BatchNorm1D(3)(X), ValueError, ["BatchNorm1D.forward", "x.shape[1]=4", "num_features=3"]),
    (lambda: fg.BatchNorm2D(4)(X), ValueError, ["BatchNorm2D.forward", "x", "4-D"]),
    (lambda: fg.BatchNorm1D(4)(X[:1]), ValueError, ["BatchNorm1D.forward", "more than one value per channel"]),
    (lambda: fg.BatchNorm1D(3, momentum=2), ValueError, ["momentum", "<= 1"]),
    (lambda: fg.BatchNorm1D(3, affine="yes"), TypeError, ["affine"]),
    (lambda: F.batch_norm_forward(X, training=False), ValueError, ["running_mean", "training=False"]),
    (lambda: F.batch_norm_forward(X, training=False, running_mean=B, running_var=np.ones(4)), ValueError, ["running_mean", "(4)"]),
    (lambda: fg.Sequential(fg.Dense(4, 3)).train(1), TypeError, ["train", "mode"]),
]


@pytest.mark.parametrize("call,exc,words", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_input_raises_clear_error(call, exc, words):
    snapshot = [a.copy() for a in (X, W, B, NAN, P)]
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert len(message) < 300, message
    assert not type(info.value).__module__.startswith("numba") and "Typing" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    for before, after in zip(snapshot, (X, W, B, NAN, P)):
        assert np.array_equal(before, after, equal_nan=True)


def test_nan_propagates_when_check_finite_is_off():
    y, _ = F.dense_forward(NAN, W, B, "relu", check_finite=False)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()
    s = F.softmax(NAN, check_finite=False)
    assert np.isnan(s[1]).all() and np.isfinite(s[[0, 2]]).all()
    fg.set_check_finite(False)
    try:
        assert np.isnan(F.log_softmax(NAN)[1]).all()
    finally:
        fg.set_check_finite(True)
    with pytest.raises(ValueError):
        F.log_softmax(NAN)


def test_list_input_is_accepted_as_float():
    y, _ = F.dense_forward([[1.0, 2.0, 3.0, 4.0]], W, B)
    np.testing.assert_allclose(y, np.array([[1.0, 2.0, 3.0, 4.0]]) @ W.T + B)
    with pytest.raises(TypeError, match="int64"):
        F.dense_forward([[1, 2, 3, 4]], W, B)


# -- sizes: computed in Python ints before anything is allocated -------------------------


@pytest.mark.parametrize(
    "build, words",
    [
        (lambda: fg.Dense(10**6, 10**6), ["Dense", "W (1000000, 1000000)", "float32", "TiB", "bytes"]),
        (lambda: fg.Dense(10**6, 10**6, dtype=np.float64), ["Dense", "float64", "TiB"]),
        (lambda: fg.LSTM(3, 10**7), ["LSTM", "W_l0 (4, 10000000, 10000003)", "float32", "PiB"]),
        (lambda: fg.Conv2D(10**5, 10**5, 9), ["Conv2D", "K (100000, 100000, 9, 9)", "float32", "bytes"]),
    ],
)
def test_absurd_layer_sizes_raise_before_allocating(build, words):
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "Unable to allocate" not in message


def test_parameters_are_drawn_in_the_layers_own_dtype():
    """A float32 layer never holds a float64 copy of its weights, even briefly."""
    import tracemalloc

    n = 1500
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        layer = fg.Dense(n, n, dtype=np.float32, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert layer.params["W"].dtype == np.float32
    owned = 2 * n * n * 4  # W and its gradient
    assert peak < owned + n * n * 4 // 2, f"peak {peak} bytes for {owned} bytes of float32 parameters and grads"
    bound = 1 / np.sqrt(n)
    assert np.abs(layer.params["W"]).max() <= bound and layer.params["W"].std() > bound / 2


@pytest.mark.parametrize(
    "x_shape, padding, shown",
    [((1, 1, 1, 1), 10**5, "y (1, 1, 200001, 200001)"), ((1, 1, 1), 10**10, "y (1, 1, 20000000001)")],
)
def test_size_errors_speak_in_the_users_shapes(x_shape, padding, shown):
    with pytest.raises(ValueError) as info:
        F.conv_forward(np.ones(x_shape), np.ones(x_shape), padding=padding)
    message = str(info.value)
    assert shown in message and "float64" in message and "bytes" in message, message
    assert "(2, 1" not in message  # no internal stacked or 4-D layout


def test_save_errors_name_the_users_path(tmp_path):
    target = tmp_path / "missing_dir" / "m.npz"
    with pytest.raises(FileNotFoundError) as info:
        fg.save(fg.Dense(2, 2), target)
    message = str(info.value)
    assert str(target) in message and "does not exist" in message, message
    assert ".fastgrad-" not in message and ".tmp" not in message
    assert not (tmp_path / "missing_dir").exists()
