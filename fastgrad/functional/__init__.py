"""Stateless functional API: validate, allocate, call the kernels (one module per kernel module).

Every function checks its inputs first (``fastgrad._checks``; DESIGN section 4),
converts once to a C-contiguous float32/float64 array, allocates the outputs
and runs the kernel.  ``*_forward`` functions return ``(output, cache)``; the
cache holds what the matching ``*_backward`` needs (the forward is never
recomputed).  Each op also has ``*_backward_into(grads, dy, cache)``, which
accumulates (``+=``) into arrays the caller owns: the layers pass their own
``grads`` so nothing is allocated for parameter gradients.

Inputs are never modified.  dtype rule: the dtype of the first tensor
(``x`` / ``logits``) decides; the other tensors must have the same dtype.

    dense          dense_forward, dense_backward, dense_backward_into
    activation     activation_forward, activation_backward, activation_backward_into
    softmax        softmax, softmax_backward(_into), log_softmax, log_softmax_backward(_into), cross_entropy
    conv           conv_forward, conv_backward, conv_backward_into, conv_output_shape, resolve_padding
    pool           max_pool_forward / avg_pool_forward, *_backward, *_backward_into, pool_output_shape
    lstm           lstm_forward, lstm_backward, lstm_backward_into
    embedding      embedding_forward, embedding_backward, embedding_backward_into
    norm           layer_norm_forward, batch_norm_forward, *_backward, *_backward_into
    dropout        dropout_forward, dropout_backward, dropout_backward_into
"""

from ..kernels.activations import ACTIVATIONS
from .activation import activation_backward, activation_backward_into, activation_forward
from .conv import ConvCache, conv_backward, conv_backward_into, conv_forward
from .dense import DenseCache, dense_backward, dense_backward_into, dense_forward
from .dropout import DropoutCache, dropout_backward, dropout_backward_into, dropout_forward
from .embedding import EmbeddingCache, embedding_backward, embedding_backward_into, embedding_forward
from .geometry import conv_output_shape, pool_output_shape, resolve_padding
from .lstm import LSTM_DEFAULT_ACTIVATIONS, LSTM_GATES, LSTMCache, lstm_backward, lstm_backward_into, lstm_forward
from .norm import (
    BatchNormCache,
    LayerNormCache,
    batch_norm_backward,
    batch_norm_backward_into,
    batch_norm_forward,
    layer_norm_backward,
    layer_norm_backward_into,
    layer_norm_forward,
)
from .pool import (
    PoolCache,
    avg_pool_backward,
    avg_pool_backward_into,
    avg_pool_forward,
    max_pool_backward,
    max_pool_backward_into,
    max_pool_forward,
)
from .softmax import (
    cross_entropy,
    log_softmax,
    log_softmax_backward,
    log_softmax_backward_into,
    softmax,
    softmax_backward,
    softmax_backward_into,
)

__all__ = [
    "ACTIVATIONS",
    "DenseCache",
    "dense_forward",
    "dense_backward",
    "dense_backward_into",
    "activation_forward",
    "activation_backward",
    "activation_backward_into",
    "softmax",
    "softmax_backward",
    "softmax_backward_into",
    "log_softmax",
    "log_softmax_backward",
    "log_softmax_backward_into",
    "cross_entropy",
    "ConvCache",
    "conv_forward",
    "conv_backward",
    "conv_backward_into",
    "conv_output_shape",
    "resolve_padding",
    "PoolCache",
    "max_pool_forward",
    "max_pool_backward",
    "max_pool_backward_into",
    "avg_pool_forward",
    "avg_pool_backward",
    "avg_pool_backward_into",
    "pool_output_shape",
    "LSTMCache",
    "LSTM_GATES",
    "LSTM_DEFAULT_ACTIVATIONS",
    "lstm_forward",
    "lstm_backward",
    "lstm_backward_into",
    "EmbeddingCache",
    "embedding_forward",
    "embedding_backward",
    "embedding_backward_into",
    "LayerNormCache",
    "layer_norm_forward",
    "layer_norm_backward",
    "layer_norm_backward_into",
    "BatchNormCache",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_backward_into",
    "DropoutCache",
    "dropout_forward",
    "dropout_backward",
    "dropout_backward_into",
]
