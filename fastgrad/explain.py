"""``python -m fastgrad explain OP``: the cheat sheet's equations, the kernel lines under each, a gradient check.

For a built-in op (dense, conv, pool, lstm, softmax) :func:`explain` prints
each equation of the cheat sheet's section and, under it, the kernel
functions that compute it: ``path:line`` of the ``def`` and of the lines that
implement it, with the loops around them, all read from the kernel source
files when it runs (nothing here is a copy of kernel code).  Then the
gradient-check table (:func:`fastgrad.gradcheck`) of a tiny float64 instance
of the op's layer.  For ``module:Class``, your own :class:`~fastgrad.Layer`,
it prints the class docstring (where its equations belong), the source of
``forward`` and ``backward``, and the gradient check on a random input.

The table :data:`OPS` ties each equation to kernel functions by name
(``"module.function"`` under ``fastgrad/kernels/``) and to substrings of their
lines ("anchors").  Kernels are found by parsing the kernel files with
:mod:`ast`, so helpers private to a kernel module are shown without importing
them.  Every name must exist and every anchor must match at least one line of
its function's code (docstrings excluded), otherwise :class:`AnchorError` is
raised: a kernel edit that removes an anchored line fails the tests
(``tests/test_explain.py``) instead of silently printing less.  Anchors point
at the plain index-form loops (``dense.dense_reference`` and ``dense_backward_reference``,
``products.matmul_reference``, the general convolution kernels, the LSTM cell and
``lstm.gate_products_reference`` / ``gate_backward_products_reference``), which read like the cheat sheet.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import math
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from . import kernels
from .gradcheck import gradcheck
from .layers.base import Layer

#: the root the printed paths of fastgrad's own files are relative to (``fastgrad/kernels/dense.py``)
PACKAGE_ROOT = Path(kernels.__file__).resolve().parents[2]
KERNEL_DIR = Path(kernels.__file__).resolve().parent
#: the gradient check perturbs at most this many elements of each tensor
MAX_POINTS = 200
#: largest random input (elements) for the gradient check of a user layer
MAX_INPUT_SIZE = 100_000


class ExplainError(ValueError):
    """A request explain cannot serve (unknown op, unimportable module, bad --args / --input-shape)."""


class AnchorError(LookupError):
    """The table in this module names a kernel function or line that the kernel source no longer has."""


class Source(NamedTuple):
    """Kernel function ``function`` ("module.name" under fastgrad/kernels/) and the substrings of the lines to show.

    ``role`` says how the function is used when that is not its own docstring's
    first line (e.g. the shared product with its arguments substituted).
    """

    function: str
    anchors: tuple
    role: str = ""


class Equation(NamedTuple):
    """An equation (one or more lines, as the cheat sheet writes them) and the kernel functions that compute it."""

    lines: tuple
    sources: tuple
    cheat_sheet: bool = True  # False: a line the cheat sheet leaves implicit (printed as such)


class Op(NamedTuple):
    """One op of ``explain``: where it comes from, its equations, and tiny instances for the gradient check."""

    name: str
    section: str  # the cheat sheet's section, "" when the op is not in it
    layers: str
    notation: str
    runs: tuple  # the kernels fastgrad.functional calls for this op ("module.name")
    equations: tuple
    cases: Callable  # rng -> [(layer, x)], float64 layers small enough for the full check


class SourceLine(NamedTuple):
    """One line of a source file: the path as printed, the file, its 1-based number and its text (no newline)."""

    path: str
    file: Path
    lineno: int
    text: str


class FunctionCode(NamedTuple):
    """A function as found in its source file."""

    name: str
    path: str  # as printed
    file: Path
    lineno: int  # the def line
    summary: str  # the first line of its docstring, "" without one
    code: tuple  # SourceLine of every line of the function outside its docstring
    headers: tuple  # (header line, first, last): a for/while/if/elif/else header and the lines it governs


class Explanation(NamedTuple):
    """What :func:`explanation` returns: the text and whether every gradient check passed."""

    text: str
    ok: bool


# -- the table -------------------------------------------------------------------------
# Anchors are substrings of code lines; the loop and branch headers around a
# matched line are shown with it.  matmul_reference is the plain loop of the product core every
# dense and LSTM product runs through (packed and register-tiled in the fast kernels), so the
# gradients that are products name it with their arguments substituted.

_DOT = "products.matmul_reference"
_DOT_LINE = ("acc += a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs]",)


def _dense_cases(rng):
    from .layers import Dense

    return [(Dense(4, 3, "tanh", dtype=np.float64, seed=0), rng.standard_normal((2, 4)))]


def _conv_cases(rng):
    from .layers import Conv2D

    # stride 2: the im2col path, whose sums are those of the general kernels shown above
    layer = Conv2D(2, 2, 3, stride=2, padding=1, activation="tanh", dtype=np.float64, seed=0)
    return [(layer, rng.standard_normal((2, 2, 5, 5)))]


def _pool_cases(rng):
    from .layers import AvgPool2D, MaxPool2D

    return [(MaxPool2D(2), rng.standard_normal((2, 2, 4, 4))), (AvgPool2D(3, stride=2, padding=1), rng.standard_normal((2, 2, 5, 5)))]


def _lstm_cases(rng):
    from .layers import LSTM

    return [(LSTM(3, 4, dtype=np.float64, seed=0), rng.standard_normal((5, 2, 3)))]


def _softmax_cases(rng):
    from .layers import Softmax

    return [(Softmax(), rng.standard_normal((3, 5)))]


DENSE = Op(
    "dense",
    "Dense Layer",
    "fg.Dense",
    "x (N, n) input, one sample s per row; W (m, n) weights; b (m,) bias; σ the activation",
    ("dense.dense_forward", "activations.activation_dz", "dense.dense_backward"),
    (
        Equation(("z_k = b_k + Σ_j w_kj · x_j",), (Source("dense.dense_reference", ("acc += W[k, j] * x[s, j]", "z[s, k] = b[k] + acc")),)),
        Equation(("y_k = σ(z_k)",), (Source("dense.dense_forward", ("act_row(y[s, j0:j1], z[s, j0:j1], code)",)),)),
        Equation(("∂L/∂z_k = ∂L/∂y_k · σ'(z_k)",), (
            Source("activations.activation_dz", ("dact_row(dz[lo:hi], dy[lo:hi], z[lo:hi], code, False)",)),
        )),
        Equation(
            ("∂L/∂b_k = ∂L/∂z_k                 (summed over the batch)",),
            (Source("dense.dense_backward", ("column_sums(acc, dz.reshape(-1), m, N, k0)", "db[k] += acc[k - k0]")),
             Source("util.column_sums", ("acc[k] += row[k]",))),
        ),
        Equation(
            ("∂L/∂w_kj = ∂L/∂z_k · x_j           (summed over the batch)",),
            (
                Source("dense.dense_backward_reference", ("acc += dz[s, k] * x[s, j]", "grads.dW[k, j] += acc")),
                Source(_DOT, _DOT_LINE, "the product core's loop, with C = dW, A = (dL/dz)ᵀ, B = x"),
            ),
        ),
        Equation(
            ("∂L/∂x_j = Σ_k ∂L/∂z_k · w_kj",),
            (
                Source("dense.dense_backward_reference", ("acc += dz[s, k] * W[k, j]", "grads.dx[s, j] += acc")),
                Source(_DOT, _DOT_LINE, "the product core's loop, with C = dx, A = dL/dz, B = W"),
            ),
        ),
    ),
    _dense_cases,
)

_TAP = "tap = row_tap(geo, oh, g, c, ki, kj)"  # the input row ih and column offset of kernel tap (c, ki, kj)
_KQ = "kq = K[m0 + q, c, ki, kj]"  # the weight of tap (c, ki, kj) for output channel m0 + q

CONV = Op(
    "conv",
    "Convolutional Layer",
    "fg.Conv1D, fg.Conv2D",
    "X_j input maps (channels c), Y_k output maps, K_kj kernels, B_k bias maps; ⋆ cross-correlation, * convolution; "
    "stride, padding, dilation and groups as in the index form z[n, k, oh, ow] of conv_forward's docstring.\n"
    "The lines below are the general kernels, the plain index form.  Stride 1 runs the *_s1 kernels (the same sums\n"
    "over a zero-padded copy of x), other strides the conv_im2col kernels (the same sums as matrix products on the\n"
    "product core, or row by row for groups of <= 16 output channels); the tests check both against these.",
    (
        "conv_im2col.conv_forward_im2col", "activations.activation_dz", "conv_im2col.conv_backward_im2col",
        "conv.conv_forward_s1", "conv.conv_backward_filter_s1", "conv.conv_backward_data_s1",
    ),
    (
        Equation(
            ("Z_k = B_k + Σ_j X_j ⋆ K_kj",),
            (
                Source("conv.conv_forward", ("_bias_rows(z, B, n, m0, nm, oh)", _TAP, "_fwd_tap(z, x, K")),
                Source("conv._bias_rows", ("z[n, m0 + q, oh, ow] = B[m0 + q, oh, ow]", "z[n, m0 + q, oh, ow] = B[m0 + q, 0, 0]")),
                Source("conv.row_tap", ("ih = oh * geo.sh + ki * geo.dil_h - geo.ph0", "off = kj * geo.dil_w - geo.pw0")),
                Source("conv._fwd_tap", (_KQ, "z[n, m0 + q, oh, u0 + t] += kq * x[n, tap.ci, tap.ih, b0 + t * su]")),
            ),
        ),
        Equation(("Y_k = σ(Z_k)",), (Source("conv.conv_forward", ("act_row(y[n, m0 + q, oh], z[n, m0 + q, oh], code)",)),)),
        Equation(("∂L/∂Z_k = ∂L/∂Y_k ⊙ σ'(Z_k)",), (
            Source("activations.activation_dz", ("dact_row(dz[lo:hi], dy[lo:hi], z[lo:hi], code, False)",)),
        )),
        Equation(
            ("∂L/∂B_k = ∂L/∂Z_k                  (summed over the batch; over positions too for tied bias)",),
            (
                Source("conv.conv_backward_filter", ("bias_grad(dB, dz, n, k)",)),
                Source("conv.bias_grad", ("dB[k, oh, ow] += dz[n, k, oh, ow]", "acc += dz[n, k, oh, ow]", "dB[k, 0, 0] += acc")),
            ),
        ),
        Equation(
            ("∂L/∂K_kj = X_j ⋆ ∂L/∂Z_k",),
            (
                Source(
                    "conv.conv_backward_filter",
                    ("acc = dK.dtype.type(0)", _TAP, "acc = _dot_tap(dz, x, n, k, oh, tap, geo.sw, acc)", "dK[k, c, ki, kj] += acc"),
                ),
                Source("conv._dot_tap", ("acc += dz[n, k, oh, u0 + t] * x[n, tap.ci, tap.ih, b0 + t * su]",)),
            ),
        ),
        Equation(
            ("∂L/∂X_j = Σ_k ∂L/∂Z_k * K_kj",),
            (
                Source("conv.conv_backward_data", (_TAP, "_data_tap(dx, dz, K")),
                Source("conv._data_tap", (_KQ, "dx[n, tap.ci, tap.ih, b0 + t * su] += kq * dz[n, m0 + q, oh, u0 + t]")),
            ),
        ),
    ),
    _conv_cases,
)

POOL = Op(
    "pool",
    "",
    "fg.MaxPool1D, fg.MaxPool2D, fg.AvgPool1D, fg.AvgPool2D",
    "not in the cheat sheet: window of output (oh, ow) = input rows oh·sh − ph + i (i < kh), columns ow·sw − pw + j (j < kw)",
    ("pool.max_pool_forward", "pool.max_pool_backward", "pool.avg_pool_forward", "pool.avg_pool_backward"),
    (
        Equation(
            ("y[oh, ow] = max_{i, j} x[oh·sh − ph + i, ow·sw − pw + j]   (padding never wins; ties: the first)",),
            (
                Source(
                    "pool.max_pool_forward",
                    (
                        "top = oh * geo.sh - geo.ph", "left = ow * geo.sw - geo.pw", "v = x[n, c, top + i, left + j]",
                        "take = v > best", "best = v if take else best", "bi = (top + i) * W + left + j if take else bi",
                        "y[n, c, oh, ow] = best", "arg[n, c, oh, ow] = bi",
                    ),
                ),
            ),
            False,
        ),
        Equation(
            ("∂L/∂x[argmax] += ∂L/∂y[oh, ow]",),
            (Source("pool.max_pool_backward", ("a = arg[n, c, oh, ow]", "dx[n, c, a // W, a % W] += dy[n, c, oh, ow]")),),
            False,
        ),
        Equation(
            ("y[oh, ow] = 1/(kh·kw) Σ_{i, j} x[oh·sh − ph + i, ow·sw − pw + j]   (padding counts as 0)",),
            (
                Source(
                    "pool.avg_pool_forward",
                    ("scale = y.dtype.type(1.0 / (geo.kh * geo.kw))", "acc += x[n, c, ih, iw]", "y[n, c, oh, ow] = acc * scale"),
                ),
            ),
            False,
        ),
        Equation(
            ("∂L/∂x[oh·sh − ph + i, ow·sw − pw + j] += ∂L/∂y[oh, ow] / (kh·kw)",),
            (Source("pool.avg_pool_backward", ("g = dy[n, c, oh, ow] * scale", "dx[n, c, ih, iw] += g")),),
            False,
        ),
    ),
    _pool_cases,
)

_GATES = "one row s = (t, n) of every step and sequence, one column k = (gate g, unit) of z; the h half inside the time loop"

LSTM = Op(
    "lstm",
    "LSTM",
    "fg.LSTM",
    "x_t (N, I) input at step t; gates f, i, o, n in that order; W (4, H, H+I) acting on [h_{t−1}, x_t]; b (4, H); "
    "σ_f, σ_i, σ_o, σ_n, σ_h the activations",
    ("lstm.lstm_forward", "lstm.lstm_backward"),
    (
        Equation(
            (
                "f_t = σ_f(W_f · [h_{t−1}, x_t] + b_f)",
                "i_t = σ_i(W_i · [h_{t−1}, x_t] + b_i)",
                "o_t = σ_o(W_o · [h_{t−1}, x_t] + b_o)",
                "n_t = σ_n(W_c · [h_{t−1}, x_t] + b_c)",
            ),
            (
                Source("lstm.gate_products_reference", ("acc += W[g, k, j] * hx[t, n, j]", "z[t, n, g, k] = b[g, k] + acc")),
                Source(_DOT, _DOT_LINE, f"the pre-activations z = b + W · [h_{{t−1}}, x_t] (C = z, A = [h, x], B = Wᵀ): {_GATES}"),
                Source("lstm.cell_step", ("act_row(a[t, n, g], saved.z[t, n, g], codes[g])",)),
            ),
        ),
        Equation(
            ("c_t = f_t ⊙ c_{t−1} + i_t ⊙ n_t",),
            (Source("lstm.cell_step", ("c[t + 1, n, k] = a[t, n, GATE_F, k] * c[t, n, k] + a[t, n, GATE_I, k] * a[t, n, GATE_N, k]",)),),
        ),
        Equation(
            ("h_t = o_t ⊙ σ_h(c_t)",),
            (
                Source(
                    "lstm.cell_step",
                    ("act_row(saved.sh[t, n], c[t + 1, n], codes[SLOT_H])", "ht = a[t, n, GATE_O, k] * saved.sh[t, n, k]"),
                ),
            ),
        ),
        Equation(
            ("∂L/∂c_t = ∂L/∂h_t ⊙ σ_h'(c_t) ⊙ o_t + ∂L/∂c_{t+1} ⊙ f_{t+1}",),
            (
                Source(
                    "lstm.cell_backward",
                    (
                        "dact_from_output_row(dsh, saved.c[t + 1, n], saved.sh[t, n], codes[SLOT_H])",
                        "dc[k] = dh[k] * dsh[k] * gate_o[k] + dc[k]",
                        "dc[k] = dc[k] * gate_f[k]",
                    ),
                    "scratch.dc carries ∂L/∂c_{t+1} ⊙ f_{t+1} back from step t+1",
                ),
            ),
        ),
        Equation(("∂L/∂f_t = ∂L/∂c_t ⊙ c_{t−1}",), (Source("lstm.cell_backward", ("# d_f = dc * c_{t-1}",)),)),
        Equation(("∂L/∂i_t = ∂L/∂c_t ⊙ n_t",), (Source("lstm.cell_backward", ("# d_i = dc * n_t",)),)),
        Equation(("∂L/∂o_t = ∂L/∂h_t ⊙ σ_h(c_t)",), (Source("lstm.cell_backward", ("# d_o = dh * sigma_h(c_t)",)),)),
        Equation(("∂L/∂n_t = ∂L/∂c_t ⊙ i_t",), (Source("lstm.cell_backward", ("# d_n = dc * i_t",)),)),
        Equation(
            ("∂L/∂z_g = ∂L/∂g_t ⊙ σ_g'(z_g)      for each gate g in f, i, o, n (z_g its pre-activation)",),
            (
                Source(
                    "lstm.cell_backward",
                    (
                        "dact_from_output_row(dz[t, n, g], saved.z[t, n, g], a[t, n, g], codes[g])",
                        "gate_grad_row(dz[t, n, GATE_F], db[GATE_F * H:(GATE_F + 1) * H], dc, saved.c[t, n])",
                    ),
                    "σ_g'(z_g) first fills dz's row, then ∂L/∂g_t scales it (gate_grad_row, one gate's row)",
                ),
                Source("lstm.gate_grad_row", ("dz_g = d_out[k] * other[k] * dz[k]",)),
            ),
            False,
        ),
        Equation(
            ("∂L/∂b_g[k] = Σ_t ∂L/∂z_g[k]      (summed over steps and sequences)",),
            (
                Source("lstm.gate_grad_row", ("db[k] += dz_g",), "each sequence's sum, step by step (db = its row of db_seq)"),
                Source("lstm.lstm_backward", ("db2[gk] += db_seq[n, gk]",), "then over the sequences in order"),
            ),
            False,
        ),
        Equation(
            ("∂L/∂W_g[k, j] = Σ_t ∂L/∂z_g[k] · [h_{t−1}, x_t][j]     (the dense rule, summed over steps and sequences)",),
            (
                Source("lstm.gate_backward_products_reference", ("acc += dz[t, n, g, k] * hx[t, n, j]", "dW[g, k, j] += acc")),
                Source(_DOT, _DOT_LINE, "with C = dW, A = (dL/dz)ᵀ, B = [h_{t−1}, x_t] over all steps (dL/dz is 0 at padded ones)"),
            ),
            False,
        ),
        Equation(
            ("∂L/∂[h_{t−1}, x_t][j] = Σ_g Σ_k ∂L/∂z_g[k] · W_g[k, j]   (all four gates; the h half flows back to step t−1)",),
            (
                Source("lstm.gate_backward_products_reference", ("acc += dz[t, n, g, k] * W[g, k, j]", "dhx[t, n, j] = acc")),
                Source(_DOT, _DOT_LINE, "with C = d[h, x], A = dL/dz, B = W"),
            ),
            False,
        ),
    ),
    _lstm_cases,
)

SOFTMAX = Op(
    "softmax",
    "Softmax",
    "fg.Softmax (and F.softmax / F.softmax_backward)",
    "x, y rows of n entries (one row r per sample); c a constant for numerical stability, c = −max_j x_j here",
    ("softmax.softmax_forward", "softmax.softmax_backward"),
    (
        Equation(
            ("y_k = e^{x_k} / Σ_j e^{x_j}", "    = e^{x_k + c} / Σ_j e^{x_j + c}"),
            (
                Source(
                    "softmax.softmax_forward",
                    ("c = -_row_max(x, r)", "s = _exp_row_sum(y, x, r, c)", "inv = y.dtype.type(1) / s", "y[r, k] = y[r, k] * inv"),
                ),
                Source("softmax._exp_row_sum", ("e[r, k] = exp(x[r, k] + c)", "return _row_sum(e, r)")),
            ),
        ),
        Equation(
            (
                "∂y_k/∂x_j = y_k · (δ_kj − y_j)",
                "∂L/∂x_j = Σ_k ∂L/∂y_k · y_k · (δ_kj − y_j)",
                "        = y_j · (∂L/∂y_j − Σ_k ∂L/∂y_k · y_k)     (the Jacobian is never formed)",
            ),
            (
                Source("softmax.softmax_backward", ("dot = _row_dot(dy, y, r)", "dx[r, j] = y[r, j] * (dy[r, j] - dot)")),
                Source("softmax._row_dot", ("s += a[r, j] * b[r, j]",)),
            ),
        ),
    ),
    _softmax_cases,
)

#: the built-in ops by name
OPS = {op.name: op for op in (DENSE, CONV, POOL, LSTM, SOFTMAX)}


# -- reading source ----------------------------------------------------------------------
def display_path(file) -> str:
    """``fastgrad/...`` for fastgrad's own files, relative to the working directory when below it, else absolute."""
    file = Path(file).resolve()
    if file.is_relative_to(PACKAGE_ROOT / "fastgrad"):
        return file.relative_to(PACKAGE_ROOT).as_posix()
    if file.is_relative_to(Path.cwd().resolve()):
        return file.relative_to(Path.cwd().resolve()).as_posix()
    return file.as_posix()


def _docstring_node(node):
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def kernel_function(name: str) -> FunctionCode:
    """The function ``name`` ("module.function", e.g. ``"dense.dense_forward"``) as written in fastgrad/kernels/.

    Raises :class:`AnchorError` when the file or a top-level function of that name does not exist.
    """
    module, _, func = name.partition(".")
    file = KERNEL_DIR / f"{module}.py"
    if not func or not file.is_file():
        raise AnchorError(f"explain: no kernel module for {name!r} (expected fastgrad/kernels/{module}.py); update fastgrad/explain.py")
    text = file.read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            return _function_code(name, file, text.splitlines(), node)
    raise AnchorError(f"explain: {display_path(file)} has no function {func}; the kernel changed, update the table in fastgrad/explain.py")


def _function_code(name, file, lines, node) -> FunctionCode:
    path = display_path(file)
    doc = _docstring_node(node)
    skip = range(doc.lineno, doc.end_lineno + 1) if doc is not None else range(0)
    summary = inspect.cleandoc(doc.value.value).split("\n", 1)[0] if doc is not None else ""
    code = tuple(SourceLine(path, file, i, lines[i - 1]) for i in range(node.lineno, node.end_lineno + 1) if i not in skip)
    return FunctionCode(name, path, file, node.lineno, summary, code, tuple(_headers(node, lines)))


def _headers(func_node, lines):
    """(header line, first, last) for every loop and branch in the function: the lines first..last run under the header."""
    for node in ast.walk(func_node):
        if isinstance(node, (ast.For, ast.While, ast.If)):
            yield node.lineno, node.body[0].lineno, node.end_lineno  # an if's line heads its elif/else too
        if isinstance(node, ast.If) and node.orelse and not lines[node.orelse[0].lineno - 1].lstrip().startswith("elif"):
            # a plain else: its line is the last "else" between the body and the first statement of the branch
            for i in range(node.orelse[0].lineno - 1, node.body[-1].end_lineno, -1):
                if lines[i - 1].lstrip().startswith("else"):
                    yield i, node.orelse[0].lineno, node.orelse[-1].end_lineno
                    break


def anchored_lines(func: FunctionCode, anchors) -> list:
    """The def line, every code line containing one of ``anchors`` and the loop and branch headers around them, in file order.

    Raises :class:`AnchorError` naming the anchor when one matches no line.
    """
    shown = {func.lineno}
    for anchor in anchors:
        hits = [line.lineno for line in func.code if anchor in line.text]
        if not hits:
            raise AnchorError(
                f"explain: no line of {func.name} ({func.path}) contains {anchor!r}; the kernel changed, "
                "update the table in fastgrad/explain.py"
            )
        for lineno in hits:
            shown.add(lineno)
            shown.update(header for header, first, last in func.headers if first <= lineno <= last)
    return [line for line in func.code if line.lineno in shown]


def format_lines(lines, indent: str = "    ") -> list:
    """``path:line | text`` rows, the text dedented by the smallest indentation among ``lines``."""
    texts = [line.text for line in lines]
    cut = min((len(t) - len(t.lstrip()) for t in texts if t.strip()), default=0)
    width = max((len(f"{line.path}:{line.lineno}") for line in lines), default=0)
    return [f"{indent}{f'{line.path}:{line.lineno}':<{width}} | {line.text[cut:].rstrip()}" for line in lines]


def equation_block(equation: Equation) -> list:
    """The equation's lines, then each kernel function that computes it with its anchored lines."""
    out = list(equation.lines)
    for source in equation.sources:
        func = kernel_function(source.function)
        out.append(f"  {source.function}: {func.summary}")
        if source.role:
            out.append(f"    here {source.role}")
        out.extend(format_lines(anchored_lines(func, source.anchors)))
    return out


# -- gradient check ----------------------------------------------------------------------
def describe(layer: Layer) -> str:
    """``Dense(in_features=4, out_features=3, activation='tanh')``: the constructor arguments that differ from the defaults."""
    config = layer.get_config()
    try:
        params = inspect.signature(type(layer)).parameters
    except (TypeError, ValueError):
        params = {}
    shown = []
    for key, value in config.items():
        default = params[key].default if key in params else inspect.Parameter.empty
        if key == "dtype" or (default is not inspect.Parameter.empty and _same(default, value)):
            continue
        shown.append(f"{key}={value!r}")
    return f"{type(layer).__name__}({', '.join(shown)})"


def _same(default, value) -> bool:
    """Whether a config value is the default: padding [0, 0] is padding=0."""
    if isinstance(value, (list, tuple)) and not isinstance(default, (list, tuple)):
        return len(value) > 0 and all(_same(default, v) for v in value)
    try:
        return bool(default == value)
    except (TypeError, ValueError):  # e.g. an array default: show the value
        return False


def check_block(layer: Layer, x: np.ndarray, label: str) -> tuple:
    """(lines, ok): the gradient-check table of ``layer`` on ``x`` (float64, at most MAX_POINTS elements per tensor)."""
    report = gradcheck(layer, x, max_points=MAX_POINTS, raise_on_failure=False)
    head = f"gradient check of {label} on a random x of shape {tuple(x.shape)}, float64:"
    return [head, *str(report).splitlines()], report.ok


# -- the two kinds of request ------------------------------------------------------------
def _explain_op(op: Op, check: bool, seed: int) -> Explanation:
    where = f'the cheat sheet\'s "{op.section}"' if op.section else "not a section of the cheat sheet"
    out = [f"{op.name}: {where}; layers {op.layers}", op.notation, "", "kernels (called by fastgrad.functional):"]
    for name in op.runs:
        func = kernel_function(name)
        out.append(f"  {name}: {func.summary}")
        out.extend(format_lines([func.code[0]]))
    extra = False
    for equation in op.equations:
        if not equation.cheat_sheet and not extra and op.section:
            out += ["", f"-- beyond the cheat sheet (lines the {op.section} section leaves implicit) --"]
            extra = True
        out += ["", *equation_block(equation)]
    ok = True
    if check:
        for layer, x in op.cases(np.random.default_rng(seed)):
            lines, passed = check_block(layer, x, describe(layer))
            out += ["", *lines]
            ok &= passed
    return Explanation("\n".join(out), ok)


def parse_shape(shape) -> tuple:
    """(3, 4) from "3,4" or a sequence of positive ints; :class:`ExplainError` otherwise."""
    items = shape.split(",") if isinstance(shape, str) else shape
    try:
        dims = tuple(int(str(d).strip()) for d in items)
    except (TypeError, ValueError):
        dims = ()
    if not dims or min(dims) < 1:
        raise ExplainError(f"explain: --input-shape must be positive integers separated by commas, such as 4,8; got {shape!r}"[:290])
    if math.prod(dims) > MAX_INPUT_SIZE:
        raise ExplainError(
            f"explain: --input-shape {dims} has {math.prod(dims)} elements; the check perturbs elements one by one, "
            f"use a small shape (at most {MAX_INPUT_SIZE} elements)"
        )
    return dims


def _constructor_args(args) -> dict:
    if args is None:
        return {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as exc:
            raise ExplainError(f"explain: --args must be a JSON object such as '{{\"n\": 8}}'; {exc}"[:290]) from None
    if not isinstance(args, dict):
        raise ExplainError(f"explain: --args must be a JSON object such as '{{\"n\": 8}}', got {type(args).__name__}")
    return args


def user_layer_class(spec: str) -> type:
    """Import ``module`` and return its Layer subclass ``Class`` for the spec ``module:Class``."""
    module_name, _, qualname = spec.partition(":")
    if not module_name or not qualname:
        raise ExplainError(f"explain: name your layer as module:Class (e.g. mylayers:RMSNorm), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while it runs
        raise ExplainError(
            f"explain: cannot import {module_name!r} ({type(exc).__name__}: {exc}); "
            "run from the directory that holds it or add it to PYTHONPATH"[:290]
        ) from None
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is None:
        raise ExplainError(f"explain: module {module_name} has no {qualname}"[:290])
    if not (isinstance(obj, type) and issubclass(obj, Layer)):
        raise ExplainError(f"explain: {spec} must name a fastgrad Layer subclass, found a {type(obj).__name__}")
    return obj


def method_lines(cls: type, name: str) -> list:
    """Every non-blank source line of ``cls.<name>`` (inherited or not) as SourceLine; [] when Python has no source for it."""
    func = inspect.unwrap(getattr(cls, name))
    try:
        file = Path(inspect.getsourcefile(func))
        lines, start = inspect.getsourcelines(func)
    except (OSError, TypeError):  # defined in an interactive session or by exec: no file to read
        return []
    path = display_path(file)
    return [SourceLine(path, file, start + i, text.rstrip("\n")) for i, text in enumerate(lines) if text.strip()]


def _explain_user(spec, check, args, input_shape, seed) -> Explanation:
    cls = user_layer_class(spec)
    kwargs = _constructor_args(args)
    shape = parse_shape(input_shape) if input_shape is not None else None
    if check and shape is None:
        raise ExplainError(
            f"explain: the gradient check of {spec} needs the shape of its input: pass --input-shape (e.g. --input-shape 4,8), "
            "or --no-check for the equations and code only"
        )
    call = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    layer = None
    if check:  # only the check needs an instance
        try:
            layer = cls(**kwargs)
        except Exception as exc:  # the user's constructor may raise anything
            raise ExplainError(
                f"explain: {call} failed ({type(exc).__name__}: {exc}); pass constructor arguments "
                "as JSON with --args '{\"name\": value}'"[:290]
            ) from None
    doc = cls.__dict__.get("__doc__")  # its own docstring, not one inherited from a base class
    out = [f"{spec}: your layer, a fastgrad Layer subclass", ""]
    if doc:
        out += ["equations (the class docstring):", *(("  " + line).rstrip() for line in inspect.cleandoc(doc).splitlines())]
    else:
        out.append(f"equations: {cls.__name__} has no docstring; write its equations there and they are printed here")
    for name in ("forward", "backward"):
        lines = method_lines(cls, name)
        where = f"{lines[0].path}:{lines[0].lineno}" if lines else "no source available"
        out += ["", f"{name}: {where}", *format_lines(lines)]
    ok = True
    if check:
        x = np.random.default_rng(seed).standard_normal(shape)
        label = f"{call} ({spec})"
        try:
            lines, ok = check_block(layer, x, label)
        except Exception as exc:  # the user's forward/backward may raise anything: report it, keep the listing
            reason = f"{type(exc).__name__}: {str(exc).strip()}"
            lines, ok = [f"gradient check of {label} on a random x of shape {shape} could not run: {reason}"], False
        out += ["", *lines]
    return Explanation("\n".join(out), ok)


def explanation(op: str, check: bool = True, args=None, input_shape=None, seed: int = 0) -> Explanation:
    """The explanation of ``op`` and whether its gradient checks passed (see :func:`explain`)."""
    if not isinstance(op, str):
        raise TypeError(f"explain: op must be a string such as 'dense', got {type(op).__name__}")
    if ":" in op:
        return _explain_user(op, check, args, input_shape, seed)
    if args is not None or input_shape is not None:
        raise ExplainError(
            "explain: --args and --input-shape are for your own layer (module:Class); the built-in ops use a fixed tiny instance"
        )
    key = op.strip().lower()
    if key not in OPS:
        raise ExplainError(f"explain: unknown op {op!r}; choose one of {', '.join(OPS)}, or module:Class for your own layer"[:290])
    return _explain_op(OPS[key], check, seed)


def explain(op: str, check: bool = True, args=None, input_shape=None, seed: int = 0) -> str:
    """The cheat sheet's equations of ``op`` with the kernel lines under each, then a gradient-check table.

    ``op``: ``"dense"``, ``"conv"``, ``"pool"``, ``"lstm"``, ``"softmax"``, or
    ``"module:Class"`` for your own Layer subclass (the module is imported).
    For ``module:Class``: ``args`` are the constructor arguments (a dict or a
    JSON object string), ``input_shape`` the shape of the random float64 input
    of the check (``(4, 8)`` or ``"4,8"``; required unless ``check=False``).
    ``check=False`` skips the gradient check (no kernel compiles).  Raises
    :class:`ExplainError` for a request it cannot serve.
    """
    return explanation(op, check, args, input_shape, seed).text
