"""A stack of Dense layers trained in one compiled call per half step (``fastgrad.fused``).

The digits MLP's step spent two thirds of its time in Python between kernel
calls (measured with benchmarks.overhead, Intel Xeon AVX-512: 167 us a step,
63 us of it in kernels).  These two functions make the same kernel calls, in
the same order, on the same arrays as the layers do, from compiled code:

    stack_forward:   for each layer i:  [scan y_{i-1}]  y_i = sigma(W_i y_{i-1} + b_i)   (dense.dense_forward)
                     [scan logits]  losses, dL/dlogits = cross-entropy(y_{L-1}, labels)
    stack_backward:  for each layer i from the top:  [scan dy]  dL/dz = dy * sigma'(z)
                     dW_i, db_i (+)=, dx_i = dL/dz W_i  (dense.dense_backward; no dx for i = 0)

so the results are bitwise those of the layers (the serial twins, which the
layers run at these sizes too; every kernel gives the same bits on any thread
count).  The scans are check_finite's: a nonzero return value names what was
not finite, and ``fastgrad.fused`` raises the layers' own error for it.
"""

from typing import NamedTuple

from .._jit import helper
from . import activations as kact
from . import dense as kdense
from . import softmax as ksoftmax
from . import util as kutil
from .dense import DenseGrads

# the serial twins, as globals numba can call
_forward = kdense.dense_forward.serial
_backward = kdense.dense_backward.serial
_activation_dz = kact.activation_dz.serial
_cross_entropy = ksoftmax.cross_entropy_labels.serial
_all_finite = kutil.all_finite.serial

#: return values: 0, or what was not finite (+ the layer's index)
OK = 0
BAD_INPUT = 1  # + i: the input of layer i (x for i = 0)
BAD_LOGITS = 1000
BAD_DY = 2000  # + i: dL/dy of layer i


class Layers(NamedTuple):
    """The layers' own arrays, one tuple entry per layer: W, b ((0,): none), their grads, sigma's code."""

    W: tuple
    b: tuple
    gW: tuple
    gb: tuple
    code: tuple


class Buffers(NamedTuple):
    """Per layer: z, y (y is z for the identity), dL/dz ((0, 0) for the identity), dx ((0, 0) for
    layer 0), and the packing buffers and plans of the forward, dx and dW products."""

    z: tuple
    y: tuple
    dz: tuple
    dx: tuple
    fwd_packed: tuple
    fwd_plan: tuple
    dx_packed: tuple
    dx_plan: tuple
    dw_packed: tuple
    dw_plan: tuple


@helper(fastmath=False)
def stack_forward(x, labels, layers, bufs, losses, dlogits, scale, check):
    """The forward of every layer, then the cross-entropy of the last output: 0, or what was not finite."""
    inp = x
    for i in range(len(layers.W)):
        if check and not _all_finite(inp.reshape(-1)):
            return BAD_INPUT + i
        _forward(bufs.y[i], bufs.z[i], inp, layers.W[i], layers.b[i], layers.code[i], bufs.fwd_packed[i], bufs.fwd_plan[i])
        inp = bufs.y[i]
    if check and not _all_finite(inp.reshape(-1)):
        return BAD_LOGITS
    _cross_entropy(losses, dlogits, inp, labels, scale)
    return OK


@helper(fastmath=False)
def stack_backward(x, layers, bufs, dlogits, check):
    """The backward of every layer from the top, accumulating dW and db: 0, or what was not finite."""
    dy = dlogits
    for i in range(len(layers.W) - 1, -1, -1):
        if check and not _all_finite(dy.reshape(-1)):
            return BAD_DY + i
        code = layers.code[i]
        dz = dy
        if code != 0:
            dz = bufs.dz[i]
            _activation_dz(dz.reshape(-1), dy.reshape(-1), bufs.z[i].reshape(-1), code)
        inp = x if i == 0 else bufs.y[i - 1]
        dx = bufs.dx[i]
        dx.reshape(-1)[:] = 0  # dx accumulates, as into the layer's np.zeros
        grads = DenseGrads(dx, layers.gW[i], layers.gb[i])
        _backward(grads, dz, inp, layers.W[i], bufs.dx_packed[i], bufs.dw_packed[i], bufs.dx_plan[i], bufs.dw_plan[i])
        dy = dx
    return OK
