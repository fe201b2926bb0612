"""Explicit SIMD vectors for the product core: an LLVM ``<W x T>`` value type and its intrinsics.

Why: numba/LLVM do not turn a register-tiled micro-kernel written with scalar
accumulators into an outer product of vector registers (measured: with
``reassoc`` LLVM vectorised the k loop instead, with gathers, 5-34 GFLOP/s;
see docs/architecture.md).  With explicit vector values each :func:`vfma` is
exactly one ``llvm.fma.vWfT`` call, i.e. one ``vfmadd231p?`` instruction, and
the 12 accumulators of the tile stay in 12 registers.

The lane count W comes from the CPU numba compiles for
(``fastgrad._jit.cpu_info()``: 512-bit vectors with AVX-512F, 256-bit with AVX,
else 128-bit): float32 W = 16 / 8 / 4, float64 W = 8 / 4 / 2.  numba's cache key
holds the CPU name and features, so code built for one width is never loaded
on a CPU where W would differ.

Indices are flat element offsets into a C-contiguous array of any ndim.
Nothing here checks bounds: the caller guarantees them (an inner loop).  Every
function has a plain-NumPy twin that runs under ``NUMBA_DISABLE_JIT=1`` (a
"vector" is then a NumPy array of W values), so the pure-Python bounds audit
still runs the product core.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, models, overload, register_model

from .._jit import cpu_info

#: lanes of one vector register per dtype name, from the CPU the kernels are compiled for
LANES = dict(cpu_info()["lanes"])

_NB_LANES = {types.float32: LANES["float32"], types.float64: LANES["float64"]}


class VecType(types.Type):
    """A SIMD vector of ``lanes`` values of ``dtype``; lives only inside compiled functions."""

    def __init__(self, dtype, lanes):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"vec<{lanes} x {dtype}>")


@register_model(VecType)
class _VecModel(models.PrimitiveModel):
    """A first-class LLVM vector value (one register)."""

    def __init__(self, dmm, fe_type):
        elem = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elem, fe_type.lanes))


def _vec_of(dtype) -> VecType:
    return VecType(dtype, _NB_LANES[dtype])


def _is_float_array(a) -> bool:
    return isinstance(a, types.Array) and a.layout == "C" and a.dtype in _NB_LANES


def _elem_ptr(context, builder, arrty, arr, idxty, idx):
    """Pointer to the element at flat offset ``idx`` (no bounds or negative-index check)."""
    ary = context.make_array(arrty)(context, builder, arr)
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.gep(ary.data, [i])


def _splat(builder, x, lanes):
    """Broadcast the scalar LLVM value ``x`` to ``lanes`` lanes."""
    vt = ir.VectorType(x.type, lanes)
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(i32, 0))
    zeros = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), zeros)


def _lane_mask(builder, lanes, n):
    """``<lanes x i1>`` with lanes [0, n) set (n an intp, any value)."""
    iota = ir.Constant(ir.VectorType(n.type, lanes), list(range(lanes)))
    return builder.icmp_signed("<", iota, _splat(builder, n, lanes))


def _masked(builder, name, vt, store):
    """``llvm.masked.load`` / ``llvm.masked.store`` for the vector type vt."""
    elem = "f32" if isinstance(vt.element, ir.FloatType) else "f64"
    mask_t = ir.VectorType(ir.IntType(1), vt.count)
    if store:
        fnty = ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), ir.IntType(32), mask_t])
    else:
        fnty = ir.FunctionType(vt, [vt.as_pointer(), ir.IntType(32), mask_t, vt])
    return cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.{name}.v{vt.count}{elem}.p0")


# --------------------------------------------------------------------------
# the compiled intrinsics
# --------------------------------------------------------------------------


@intrinsic
def _lanes(typingctx, x):
    dtype = x.dtype if isinstance(x, types.Array) else x
    if dtype not in _NB_LANES:
        return None
    w = _NB_LANES[dtype]

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, w)

    return types.intp(x), codegen


@intrinsic
def _vload(typingctx, a, i):
    if not (_is_float_array(a) and isinstance(i, types.Integer)):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        llvt = context.get_value_type(vt)
        # element alignment only: packed buffers and user arrays are not vector-aligned
        # (vmovups on aligned data costs the same as vmovaps)
        return builder.load(builder.bitcast(ptr, llvt.as_pointer()), align=a.dtype.bitwidth // 8)

    return vt(a, i), codegen


@intrinsic
def _vload_partial(typingctx, a, i, n):
    if not (_is_float_array(a) and isinstance(i, types.Integer) and isinstance(n, types.Integer)):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        llvt = context.get_value_type(vt)
        mask = _lane_mask(builder, vt.lanes, context.cast(builder, args[2], sig.args[2], types.intp))
        align = ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8)
        fn = _masked(builder, "load", llvt, store=False)
        return builder.call(fn, [builder.bitcast(ptr, llvt.as_pointer()), align, mask, ir.Constant(llvt, None)])

    return vt(a, i, n), codegen


@intrinsic
def _vstore(typingctx, a, i, v):
    if not (_is_float_array(a) and isinstance(i, types.Integer) and v == _vec_of(a.dtype)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        llvt = context.get_value_type(sig.args[2])
        builder.store(args[2], builder.bitcast(ptr, llvt.as_pointer()), align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(a, i, v), codegen


@intrinsic
def _vstore_partial(typingctx, a, i, v, n):
    if not (_is_float_array(a) and isinstance(i, types.Integer) and v == _vec_of(a.dtype) and isinstance(n, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        llvt = context.get_value_type(sig.args[2])
        mask = _lane_mask(builder, llvt.count, context.cast(builder, args[3], sig.args[3], types.intp))
        align = ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8)
        fn = _masked(builder, "store", llvt, store=True)
        builder.call(fn, [args[2], builder.bitcast(ptr, llvt.as_pointer()), align, mask])
        return context.get_dummy_value()

    return types.none(a, i, v, n), codegen


@intrinsic
def _vbroadcast_at(typingctx, a, i):
    if not (_is_float_array(a) and isinstance(i, types.Integer)):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        return _splat(builder, builder.load(ptr), vt.lanes)  # folds into vbroadcastss ymm, [mem]

    return vt(a, i), codegen


@intrinsic
def _vzero(typingctx, a):
    if not _is_float_array(a):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)

    return vt(a), codegen


@intrinsic
def _vfma(typingctx, a, b, c):
    if not (isinstance(a, VecType) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        llvt = context.get_value_type(a)
        elem = "f32" if a.dtype == types.float32 else "f64"
        # declared by hand: llvmlite cannot mangle vector intrinsic names
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(llvt, [llvt] * 3), f"llvm.fma.v{a.lanes}{elem}")
        return builder.call(fn, list(args))

    return a(a, b, c), codegen


@intrinsic
def _vadd(typingctx, a, b):
    if not (isinstance(a, VecType) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])  # IEEE, no fast-math flags

    return a(a, b), codegen


@intrinsic
def _sload(typingctx, a, i):
    if not (_is_float_array(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1]))

    return a.dtype(a, i), codegen


@intrinsic
def _sstore(typingctx, a, i, x):
    if not (_is_float_array(a) and isinstance(i, types.Integer) and isinstance(x, (types.Float, types.Integer))):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        builder.store(context.cast(builder, args[2], sig.args[2], a.dtype), ptr)
        return context.get_dummy_value()

    return types.none(a, i, x), codegen


# --------------------------------------------------------------------------
# the public functions: plain NumPy in Python, the intrinsics in compiled code
# --------------------------------------------------------------------------


def _width(a) -> int:
    return LANES[np.dtype(a.dtype).name]


def lanes(a):
    """W, the lanes of one vector of a's dtype (a compile-time constant)."""
    return _width(a)


def vload(a, i):
    """The W elements a.flat[i : i + W] (an unaligned load)."""
    w = _width(a)
    out = a.reshape(-1)[i:i + w].copy()
    if out.size != w:
        raise IndexError(f"vload: a.flat[{i}:{i + w}] is outside an array of {a.size} elements")
    return out


def vload_partial(a, i, n):
    """a.flat[i : i + n] in lanes [0, n), zeros in the others; lanes >= n are not read (safe at an array's end)."""
    w = _width(a)
    out = np.zeros(w, a.dtype)
    k = max(0, min(n, w))
    out[:k] = a.reshape(-1)[i:i + k]
    return out


def vstore(a, i, v):
    """a.flat[i : i + W] = v."""
    w = _width(a)
    if i + w > a.size:
        raise IndexError(f"vstore: a.flat[{i}:{i + w}] is outside an array of {a.size} elements")
    a.reshape(-1)[i:i + w] = v


def vstore_partial(a, i, v, n):
    """a.flat[i : i + n] = v[:n]; the other lanes are neither read nor written."""
    k = max(0, min(n, _width(a)))
    a.reshape(-1)[i:i + k] = v[:k]


def vbroadcast_at(a, i):
    """A vector with every lane = a.flat[i]."""
    return np.full(_width(a), a.reshape(-1)[i], a.dtype)


def vzero(a):
    """The zero vector of a's dtype."""
    return np.zeros(_width(a), a.dtype)


def vfma(a, b, c):
    """a * b + c lane-wise, rounded once (llvm.fma)."""
    return a * b + c


def vadd(a, b):
    """a + b lane-wise."""
    return a + b


def sload(a, i):
    """a.flat[i] (no negative-index wraparound code: that select kept packing loops scalar)."""
    return a.reshape(-1)[i]


def sstore(a, i, x):
    """a.flat[i] = x, converted to a's dtype."""
    a.reshape(-1)[i] = x


@overload(lanes)
def _lanes_compiled(a):
    return lambda a: _lanes(a)


@overload(vload)
def _vload_compiled(a, i):
    return lambda a, i: _vload(a, i)


@overload(vload_partial)
def _vload_partial_compiled(a, i, n):
    return lambda a, i, n: _vload_partial(a, i, n)


@overload(vstore)
def _vstore_compiled(a, i, v):
    return lambda a, i, v: _vstore(a, i, v)


@overload(vstore_partial)
def _vstore_partial_compiled(a, i, v, n):
    return lambda a, i, v, n: _vstore_partial(a, i, v, n)


@overload(vbroadcast_at)
def _vbroadcast_at_compiled(a, i):
    return lambda a, i: _vbroadcast_at(a, i)


@overload(vzero)
def _vzero_compiled(a):
    return lambda a: _vzero(a)


@overload(vfma)
def _vfma_compiled(a, b, c):
    return lambda a, b, c: _vfma(a, b, c)


@overload(vadd)
def _vadd_compiled(a, b):
    return lambda a, b: _vadd(a, b)


@overload(sload)
def _sload_compiled(a, i):
    return lambda a, i: _sload(a, i)


@overload(sstore)
def _sstore_compiled(a, i, x):
    return lambda a, i, x: _sstore(a, i, x)
