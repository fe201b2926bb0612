"""Element-wise activations sigma(z) and their derivatives sigma'(z).

The cheat sheet uses one element-wise activation per layer (``y_k = sigma(z_k)``)
and five in the LSTM (sigma_f, sigma_i, sigma_o, sigma_n, sigma_h).  Kernels
select the activation with a small integer code instead of a function argument:
function-typed arguments defeat numba's on-disk cache and force one compiled
specialisation per activation.  The branch on ``code`` sits outside the inner
multiply-add loops, so it costs nothing measurable.

Definitions and defaults follow PyTorch:

======  ============  ===========================================  =========================================
code    name          sigma(z)                                     sigma'(z)
======  ============  ===========================================  =========================================
0       identity      z                                            1
1       sigmoid       1 / (1 + e^-z)  (no overflow for any z)      s (1 - s)
2       tanh          tanh z                                       1 - t^2
3       relu          max(z, 0)                                    1 if z > 0 else 0
4       leaky_relu    z if z > 0 else 0.01 z                       1 if z > 0 else 0.01
5       elu           z if z > 0 else e^z - 1                      1 if z > 0 else e^z
6       softplus      max(z, 0) + log(1 + e^-|z|)                  sigmoid(z)
7       silu          z sigmoid(z)                                 s (1 + z (1 - s))
8       gelu          z/2 (1 + tanh(a (z + 0.044715 z^3)))         see :func:`dact`; a = sqrt(2/pi)
9       hard_sigmoid  clip(z/6 + 1/2, 0, 1)                        1/6 if -3 < z < 3 else 0
10      hard_tanh     clip(z, -1, 1)                               1 if -1 < z < 1 else 0
11      gelu_erf      z Phi(z) = z/2 (1 + erf(z / sqrt 2))         Phi(z) + z phi(z), phi(z) = e^{-z^2/2} / sqrt(2 pi)
======  ============  ===========================================  =========================================

The scalar math runs in float64 (numba types float literals as float64); the
kernels cast the result back to the array dtype before it enters a multiply-add
loop, so float32 loops stay float32.
"""

import math

from numba import prange

from .._jit import F1, helper, kernel
from .vmath import exp

ACTIVATIONS = (
    "identity",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "softplus",
    "silu",
    "gelu",
    "hard_sigmoid",
    "hard_tanh",
    "gelu_erf",
)
CODES = {name: code for code, name in enumerate(ACTIVATIONS)}

IDENTITY = CODES["identity"]
SIGMOID = CODES["sigmoid"]
TANH = CODES["tanh"]

_LEAKY_SLOPE = 0.01
_ELU_ALPHA = 1.0
_GELU_A = math.sqrt(2.0 / math.pi)
_GELU_B = 0.044715
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@helper
def sigmoid(z):
    """Logistic function without overflow: e^-z is only formed for z >= 0."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@helper
def act(z, code):
    """sigma(z) for the activation with the given code (table in the module doc)."""
    if z != z:  # NaN propagates through min/max/branches too
        return z * 1.0
    if code == 0:
        return z * 1.0
    if code == 1:
        return sigmoid(z)
    if code == 2:
        return math.tanh(z)
    if code == 3:
        return z * 1.0 if z > 0 else 0.0
    if code == 4:
        return z * 1.0 if z > 0 else _LEAKY_SLOPE * z
    if code == 5:
        return z * 1.0 if z > 0 else _ELU_ALPHA * math.expm1(z)
    if code == 6:
        # max(z, 0) + log1p(e^-|z|): exact for large |z| where log(1 + e^z) overflows
        return max(z, 0.0) + math.log1p(math.exp(-abs(z)))
    if code == 7:
        return z * sigmoid(z)
    if code == 8:
        return 0.5 * z * (1.0 + math.tanh(_GELU_A * (z + _GELU_B * z * z * z)))
    if code == 9:
        return min(max(z / 6.0 + 0.5, 0.0), 1.0)
    if code == 10:
        return min(max(z * 1.0, -1.0), 1.0)
    # code == 11: gelu_erf, the exact GELU (PyTorch's GELU(approximate="none"))
    return 0.5 * z * (1.0 + math.erf(z * _SQRT_HALF))


@helper
def dact(z, code):
    """sigma'(z), the factor in the cheat sheet's dL/dz_k = dL/dy_k * sigma'(z_k).

    Computed from the pre-activation z (saved by the forward pass), so a caller
    that modified the layer output in place cannot corrupt the backward pass.
    NaN in z gives NaN (never a silent 0) for every activation with a branch.
    """
    if z != z:
        return z * 1.0
    if code == 0:
        return 1.0
    if code == 1:
        s = sigmoid(z)
        return s * (1.0 - s)
    if code == 2:
        t = math.tanh(z)
        return 1.0 - t * t
    if code == 3:
        return 1.0 if z > 0 else 0.0
    if code == 4:
        return 1.0 if z > 0 else _LEAKY_SLOPE
    if code == 5:
        return 1.0 if z > 0 else _ELU_ALPHA * math.exp(z)
    if code == 6:
        return sigmoid(z)
    if code == 7:
        s = sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if code == 8:
        u = _GELU_A * (z + _GELU_B * z * z * z)
        t = math.tanh(u)
        du = _GELU_A * (1.0 + 3.0 * _GELU_B * z * z)
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
    if code == 9:
        return 1.0 / 6.0 if -3.0 < z < 3.0 else 0.0
    if code == 10:
        return 1.0 if -1.0 < z < 1.0 else 0.0
    # code == 11: gelu_erf, d/dz z Phi(z) = Phi(z) + z phi(z)
    return 0.5 * (1.0 + math.erf(z * _SQRT_HALF)) + z * _INV_SQRT_2PI * math.exp(-0.5 * z * z)


@helper
def act_row(out, z, code):
    """out[k] = sigma(z[k]) over one row, in the row's dtype.

    The branch on ``code`` sits outside the loop and sigmoid/tanh are computed
    inline: measured 2.4x faster than one ``act`` call per element, which was
    the largest cost of the LSTM forward at H = 64, and relu / identity as plain
    selects and copies (the dense epilogue at (32, 128, 128) float32 took 60 us
    for sigmoid and about as long for relu with one ``act`` per element, against
    a 37 us product; AMD EPYC Zen 3).  e^t is
    vectorisable ``vmath.exp`` (<= 1 ulp), so each loop runs 4 (float64) / 8
    (float32) lanes at a time; with libm's scalar exp the float64 activations
    cost about 2 ms of the 3.7 ms forward at (T, N, I, H) = (50, 32, 32, 64).
    1 / (1 + e^-z) is exact in its limits in IEEE arithmetic (e^-z = inf gives 0).
    """
    one = out.dtype.type(1)
    if code == 1:
        for k in range(z.shape[0]):
            out[k] = one / (one + exp(-z[k]))
    elif code == 2:
        # tanh z = sign(z) (1 - e) / (1 + e), e = e^{-2|z|}: 19 ns per element
        # for libm tanh against 3 ns for the exp form (measured, both dtypes).
        # Absolute error <= 1 ulp of 1; below `tiny` z (1 - z^2/3) avoids the cancellation.
        two = out.dtype.type(2)
        third = out.dtype.type(1.0 / 3.0)
        tiny = out.dtype.type(0.03 if out.itemsize == 4 else 2e-4)
        for k in range(z.shape[0]):
            zk = z[k]
            e = exp(-two * abs(zk))
            big = math.copysign((one - e) / (one + e), zk)
            out[k] = zk * (one - zk * zk * third) if abs(zk) < tiny else big
    elif code == 3:
        zero = out.dtype.type(0)
        for k in range(z.shape[0]):
            zk = z[k]
            # "not zk <= 0" is true for NaN, which passes through as in act
            out[k] = zk if not zk <= zero else zero
    elif code == 0:
        for k in range(z.shape[0]):
            out[k] = z[k]
    else:
        for k in range(z.shape[0]):
            out[k] = out.dtype.type(act(z[k], code))


@helper
def dact_from_output(z, a, code):
    """sigma'(z) reusing the saved activation a = sigma(z) where that is exact.

    sigmoid' = a (1 - a), tanh' = 1 - a^2, identity' = 1: no exp/tanh in the
    backward pass for the default gates (measured: the transcendental calls cost
    as much as the matrix products at H = 64).
    """
    if code == 1:
        return a * (1.0 - a)
    if code == 2:
        return 1.0 - a * a
    if code == 0:
        return 1.0
    return dact(z, code)


@helper
def dact_from_output_row(out, z, a, code):
    """out[k] = sigma'(z[k]) over one row, reusing the saved a = sigma(z) as
    :func:`dact_from_output` does, in the row's dtype.

    The branch on ``code`` sits outside the loop, so the default LSTM gates
    (sigmoid, tanh) run as vector loops; any other code goes through the scalar
    :func:`dact`.  One scalar ``dact_from_output`` call per element and gate was
    about 2 ms of the 13 ms LSTM backward at (T, N, I, H) = (100, 16, 128, 128),
    float32 (AMD EPYC Zen 3).
    """
    one = out.dtype.type(1)
    if code == 1:
        for k in range(a.shape[0]):
            out[k] = a[k] * (one - a[k])
    elif code == 2:
        for k in range(a.shape[0]):
            out[k] = one - a[k] * a[k]
    elif code == 0:
        for k in range(a.shape[0]):
            out[k] = one
    else:
        for k in range(a.shape[0]):
            out[k] = out.dtype.type(dact(z[k], code))


@helper
def dact_row(dz, dy, z, code, add):
    """dz[k] (+)= dy[k] sigma'(z[k]) over one row (``add``: accumulate, else overwrite).

    As act_row: the branch on ``code`` outside the loop, sigmoid and tanh from
    the vectorisable ``vmath.exp``, relu and identity without calls; any other
    code through the scalar :func:`dact`.  NaN in z gives NaN, as dact.
    """
    one = dz.dtype.type(1)
    zero = dz.dtype.type(0)
    two = dz.dtype.type(2)
    if code == 0:
        for k in range(z.shape[0]):
            _put_grad(dz, k, dy[k], add)
    elif code == 1:
        for k in range(z.shape[0]):
            s = one / (one + exp(-z[k]))
            _put_grad(dz, k, dy[k] * (s * (one - s)), add)
    elif code == 2:
        for k in range(z.shape[0]):
            e = exp(-two * abs(z[k]))
            t = (one - e) / (one + e)  # |tanh z|: the derivative needs only t^2
            _put_grad(dz, k, dy[k] * (one - t * t), add)
    elif code == 3:
        for k in range(z.shape[0]):
            zk = z[k]
            d = one if zk > zero else zero
            # NaN in z gives NaN, as dact
            d = zk if zk != zk else d
            _put_grad(dz, k, dy[k] * d, add)
    else:
        for k in range(z.shape[0]):
            _put_grad(dz, k, dy[k] * dz.dtype.type(dact(z[k], code)), add)


@helper
def _put_grad(dz, k, g, add):
    if add:
        dz[k] += g
    else:
        dz[k] = g


#: elements per parallel iteration of the element-wise kernels: long enough for
#: the vector loops of act_row / dact_row, short enough to share 2**15 elements
ROW = 2048


@kernel
def activation_forward(y: F1, z: F1, code: int):
    """y_k = sigma(z_k) element-wise over flat arrays; y and z have shape (size,)."""
    for r in prange((z.shape[0] + ROW - 1) // ROW):
        lo = r * ROW
        hi = min(lo + ROW, z.shape[0])
        act_row(y[lo:hi], z[lo:hi], code)


@kernel
def activation_dz(dz: F1, dy: F1, z: F1, code: int):
    """dL/dz_k = dL/dy_k * sigma'(z_k) element-wise over flat arrays of shape (size,), overwriting dz.

    The first step of the dense and conv backward passes: computed once, so the
    product kernels read dL/dz instead of re-evaluating sigma' per use.
    """
    for r in prange((z.shape[0] + ROW - 1) // ROW):
        lo = r * ROW
        hi = min(lo + ROW, z.shape[0])
        dact_row(dz[lo:hi], dy[lo:hi], z[lo:hi], code, False)


@kernel
def activation_backward(dz: F1, dy: F1, z: F1, code: int):
    """dL/dz_k += dL/dy_k * sigma'(z_k) element-wise over flat arrays of shape (size,)."""
    for r in prange((z.shape[0] + ROW - 1) // ROW):
        lo = r * ROW
        hi = min(lo + ROW, z.shape[0])
        dact_row(dz[lo:hi], dy[lo:hi], z[lo:hi], code, True)
