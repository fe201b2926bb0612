"""The product core (kernels.products): packed panels, the vector register tile, cache blocks.

Checked against its plain index-form twin (products.matmul_reference) and a float64
NumPy product on odd shapes, every operand layout, bias / overwrite / accumulate,
at 1 and 2 threads bitwise; the plan depends on the shapes only.
"""

import numpy as np
import pytest

from fastgrad import _jit
from fastgrad.kernels import products as P
from fastgrad.kernels import simd

SENTINEL = -12345.0
SHAPES = [(1, 1, 1), (3, 2, 1), (7, 13, 5), (6, 16, 256), (5, 17, 3), (13, 1, 300), (1, 40, 7), (65, 129, 257), (12, 33, 0)]


def _operand(mat: np.ndarray, transposed: bool) -> P.Operand:
    """mat read in place (row-major) or from its transpose's buffer (as W^T, dz^T are)."""
    rows, cols = mat.shape
    if transposed:
        return P.Operand(np.ascontiguousarray(mat.T).reshape(-1), 1, rows)
    return P.Operand(np.ascontiguousarray(mat).reshape(-1), cols, 1)


def _run(kernel, m, n, k, dtype, layouts, mode, rng):
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    plan = P.gemm_plan(m, n, k, dtype)
    packed = P.Packed(*[np.full(size, np.nan, dtype) for size in P.packed_sizes(plan, dtype)])
    bias = rng.standard_normal(n).astype(dtype) if mode == "bias" else np.zeros(0, dtype)
    start = rng.standard_normal((m, n)).astype(dtype)
    c = start.copy()
    a, b = _operand(A, layouts[0] == "T"), _operand(B, layouts[1] == "T")
    if kernel is P.matmul_reference:
        kernel(c.reshape(-1), n, a, b, bias, mode == "accumulate", plan)
    else:
        kernel(c.reshape(-1), n, a, b, bias, mode == "accumulate", packed, plan)
    ref = A.astype(np.float64) @ B.astype(np.float64)
    ref = ref + (start if mode == "accumulate" else bias.astype(np.float64) if mode == "bias" else 0)
    return c, ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, n, k", SHAPES)
@pytest.mark.parametrize("layouts", ["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("mode", ["store", "bias", "accumulate"])
def test_core_equals_float64_product_on_odd_shapes(dtype, m, n, k, layouts, mode):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    for kernel in (P.matmul.serial, P.matmul.parallel):
        got, ref = _run(kernel, m, n, k, dtype, layouts, mode, np.random.default_rng(m * 1000 + n * 10 + k))
        tol = (2e-6 if dtype == np.float32 else 1e-14) * max(1.0, np.sqrt(k))
        scale = max(1.0, np.abs(ref).max())
        assert np.abs(got - ref).max() <= tol * scale, (kernel, m, n, k, layouts, mode)
    del rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, n, k", [(7, 13, 5), (13, 17, 30)])
def test_core_equals_its_plain_twin(dtype, m, n, k):
    got, _ = _run(P.matmul.parallel, m, n, k, dtype, "NT", "bias", np.random.default_rng(3))
    want, _ = _run(P.matmul_reference, m, n, k, dtype, "NT", "bias", np.random.default_rng(3))
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, n, k", [(65, 129, 257), (512, 70, 600), (32, 128, 128)])
def test_one_and_two_threads_are_bitwise_equal(dtype, m, n, k, threads):
    runs = [threads(t, lambda: _run(P.matmul.parallel, m, n, k, dtype, "NT", "bias", np.random.default_rng(5))[0])
            for t in (1, 2)]
    runs.append(_run(P.matmul.serial, m, n, k, dtype, "NT", "bias", np.random.default_rng(5))[0])
    assert runs[0].tobytes() == runs[1].tobytes() == runs[2].tobytes()


def test_plan_comes_from_the_cpu_and_the_shapes_only():
    info = _jit.cpu_info()
    for dtype in (np.float32, np.float64):
        kc, mc, nc = P.cache_blocks(dtype)
        assert P.nr_of(dtype) == 2 * simd.LANES[np.dtype(dtype).name] == 2 * info["lanes"][np.dtype(dtype).name]
        assert mc % P.MR == 0 and nc % P.nr_of(dtype) == 0 and 64 <= kc <= 1024
        # the packed B micro-panel of one KC block fits half of L1d
        assert kc * P.nr_of(dtype) * np.dtype(dtype).itemsize <= info["caches"]["L1d"] // 2 or kc == 64
        plan = P.gemm_plan(512, 1024, 1024, dtype)
        assert P.task_count(plan) >= P.MIN_TASKS and P.task_count(plan) % 4 == 0
        assert plan == P.gemm_plan(512, 1024, 1024, dtype)
        # narrow products (one or a few NR columns: an LSTM's dx and dW) split their rows instead,
        # into tasks that exist: before, (2048, 32, 512) had 3 tasks and (512, 160, 2048) had 5
        nr = P.nr_of(dtype)
        for m, n, k in ((2048, nr, 512), (512, 5 * nr, 2048), (1600, 3 * nr, 256), (4 * P.MR, 1, 8)):
            plan = P.gemm_plan(m, n, k, dtype)
            tasks = P.task_count(plan)
            assert tasks >= min(P.MIN_TASKS, -(-m // P.MR)), (m, n, k, plan)
            assert tasks % 4 == 0 or tasks == -(-m // P.MR) * -(-n // nr), (m, n, k, plan)
            blocks = {P.task_block(t, plan) for t in range(tasks)}
            assert len(blocks) == tasks and sum((i1 - i0) * (j1 - j0) for i0, i1, j0, j1 in blocks) == m * n


def test_calling_a_kernel_runs_its_parallel_twin(monkeypatch):
    """Kernel.__call__ (unknown work) runs the parallel twin even for a kernel whose serial_below is
    above PARALLEL_MIN_WORK, as matmul's is; before, P.matmul(...) silently ran the serial twin."""
    import numba

    assert P.matmul.serial_below > _jit.PARALLEL_MIN_WORK
    picked = []
    real_pick = _jit.pick

    def spy(k, work):
        fn = real_pick(k, work)
        picked.append(fn)
        return fn

    monkeypatch.setattr(_jit, "pick", spy)
    rng = np.random.default_rng(0)
    m, n, k = 9, 20, 7
    A = rng.standard_normal((m, k))
    B = rng.standard_normal((k, n))
    plan = P.gemm_plan(m, n, k, np.float64)
    packed = P.Packed(*[np.zeros(size) for size in P.packed_sizes(plan, np.float64)])
    c = np.zeros(m * n)
    P.matmul(c, n, _operand(A, False), _operand(B, False), np.zeros(0), P.OVERWRITE, packed, plan)
    np.testing.assert_allclose(c.reshape(m, n), A @ B, rtol=1e-13, atol=1e-13)
    assert len(picked) == 1
    if numba.get_num_threads() > 1 and not _jit._serial_only:
        assert picked[0] is not P.matmul.serial
    else:
        assert picked[0] is P.matmul.serial


#: row lengths in units of NR = 2 W: only 6 x 2 tiles (1, 2), one 2 x 6 tile or one pair
#: of 4 x 3 tiles (3), those followed by one or two 6 x 2 tiles (4, 5), several of each (13)
TAP_ROW_LENGTHS = (1, 2, 3, 4, 5, 13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mr", [1, 2, 3, 4, 5, 6])
def test_tap_row_every_tile_shape_gives_the_6x2_tiles_bitwise(dtype, mr):
    """products.tap_row picks its tile shape from the block's rows (2 x 6, 4 x 3, 6 x 2 vectors):
    each row is the sum over the tap table, bitwise what 6 x 2 tiles alone give, and nothing past
    the mr rows of length ldo is written (an overshooting tile would write into the next row)."""
    nr = P.nr_of(dtype)
    rng = np.random.default_rng(mr)
    terms = 7
    for units in TAP_ROW_LENGTHS:
        ldo = units * nr
        src = rng.standard_normal(ldo + 64).astype(dtype)
        tapoff = rng.integers(0, 50, terms).astype(np.int64)
        w3 = rng.standard_normal((1, mr, terms)).astype(dtype)
        wp = P.pack_tap_weights(w3)
        out = np.full((P.MR + 1) * ldo, SENTINEL, dtype)
        P.tap_row(wp, 0, src, 3, tapoff, out, 0, ldo, mr)
        alone = np.full_like(out, SENTINEL)
        for q0 in range(0, ldo, nr):
            P.tap_tile(wp, 0, src, 3 + q0, tapoff, alone, q0, ldo, mr)
        assert np.array_equal(out, alone), (mr, ldo)
        rows = out[: mr * ldo].reshape(mr, ldo)
        gathered = np.stack([src[3 + off: 3 + off + ldo] for off in tapoff]).astype(np.float64)
        want = w3[0].astype(np.float64) @ gathered
        tol = 1e-5 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(rows, want, rtol=tol, atol=tol)
        assert np.all(out[mr * ldo:] == SENTINEL), (mr, ldo)


AVX512_FEATURES = ("+avx512f,+avx512dq,+avx512bw,+avx512vl,+avx2,+avx,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,+sse4.1,"
                   "+ssse3,+sse3,+sse2,+sse,+cx16,+lzcnt,+movbe,+xsave,+prefer-256-bit")

CROSS = """
import re
from fastgrad import _jit
from fastgrad.kernels import products as P
info = _jit.cpu_info()
sig = P.matmul.signature("float32")
P.matmul.serial.compile(sig)
fmas = re.findall(r"vfmadd\\d+ps\\s+%(\\w+)", P.matmul.serial.inspect_asm(sig))
print(info["isa"], info["vector_bits"], P.nr_of("float32"), sorted({r[:3] for r in fmas}))
"""


def test_avx512_targets_get_512_bit_tiles_despite_prefer_256_bit(tmp_path):
    """Cross-compiled for Skylake-AVX512 (compiled, never run here): the tile is 6 x 32 float32 and its
    fused multiply-adds use zmm registers, although LLVM's prefer-256-bit tuning keeps ordinary loops on ymm."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_CPU_NAME="skylake-avx512", NUMBA_CPU_FEATURES=AVX512_FEATURES, FASTGRAD_DISABLE_CACHE="1",
               PYTHONPATH=str(root), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", CROSS], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["avx512f", "512", "32", "['zmm']"], proc.stdout
