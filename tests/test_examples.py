"""The example models reach their accuracy on the held-out digits (and the char LM learns)."""

import pytest


@pytest.mark.slow
def test_digits_cnn_reaches_98_percent():
    from fastgrad.examples import cnn

    result = cnn.train(progress=False)
    assert result["test_accuracy"] >= 0.98, result["test_accuracy"]


@pytest.mark.slow
def test_digits_lstm_reaches_95_percent():
    from fastgrad.examples import lstm_digits

    result = lstm_digits.train(progress=False)
    assert result["test_accuracy"] >= 0.95, result["test_accuracy"]


@pytest.mark.slow
def test_char_lm_learns_and_samples_text():
    from fastgrad.examples import charlm

    result = charlm.train(steps=150, seq_len=32, progress=False, sample_length=80)
    loss = result["history"]["loss"]
    # uniform guessing over the ~96 symbols costs log(96) = 4.56 nats per character
    assert loss[-1] < loss[0] and loss[-1] < 3.2, loss
    text = result["samples"]
    assert isinstance(text, str) and len(text) >= 80
    assert all(ch.isprintable() or ch in "\n\t" for ch in text), text
    kinds = [type(layer).__name__ for layer in result["model"].layers]
    assert kinds == ["Embedding", "Dropout", "LSTM", "Dropout", "Dense"], kinds


@pytest.mark.slow
def test_digits_cnn_with_batchnorm_reaches_98_percent():
    from fastgrad import BatchNorm2D
    from fastgrad.examples import cnn

    result = cnn.train(progress=False, batchnorm=True)
    assert sum(isinstance(layer, BatchNorm2D) for layer in result["model"].layers) == 2
    assert result["test_accuracy"] >= 0.98, result["test_accuracy"]
