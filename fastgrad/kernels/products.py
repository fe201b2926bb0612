"""The products shared by dense, conv and LSTM: the product core, its entry points and its plain twin.

**The product core** (this module's first half), for every matrix product of
dense and LSTM::

    C[i, j] (+)= bias[j] + sum_p A[i, p] B[p, j]        C (m, n), A (m, k), B (k, n)

is the Goto/BLIS structure on explicit SIMD vectors (kernels.simd).  Its loop
nest, outermost first, with where each piece lives::

    plan = gemm_plan(m, n, k, dtype)                 # Python: KC, MC, NC from the CPU's caches
    launch 1, parallel over packing items            # pack_count / pack_item
        for each KC block s of p, each MR-row panel of A and NR-column panel of B:
            copy it, zero-padded, into the packed buffers (Packed, sizes: packed_sizes)
    launch 2, parallel over tasks                    # task_count / gemm_task: the task grid
        task t owns C[i0:i1, j0:j1]  (MC x NC)       # task_block(t, plan)
        for s in KC blocks of p:                     # in order: the same sum on any thread
            for j in NR-column panels of the block:
                for i in MR-row panels of the block:
                    micro-kernel: the MR x NR tile of C in 12 vector registers,
                    for p in s .. s + KC: 2 vector loads of B, MR broadcasts of A,
                    2 MR fused multiply-adds; then store / add / bias-store the tile

* MR = 6 rows x NR = 2 W columns (W = the lanes of one vector register): 12
  accumulators + 2 B vectors + 1 broadcast = 15 of AVX2's 16 registers;
* KC, MC and NC come from the cache sizes (:func:`cache_blocks`), the task grid
  from the shapes only (:func:`gemm_plan`; at least MIN_TASKS tasks).

The entry points the layers use (nobody outside this module names MR, NR, a
panel or an offset into one; tests/test_style.py checks it):

* sizing, in Python: :func:`gemm_plan`, :func:`packed_sizes`,
  :func:`packed_b_size`, :func:`tile_shape`;
  ``NO_PRODUCT`` for a product nobody reads;
* one product from a kernel: ``pack_item`` over ``pack_count`` items, then
  ``gemm_task`` over ``task_count`` tasks (``task_block`` tells a task's block,
  for an epilogue on it while it is in cache: dense's activation, dL/db);
  :func:`pack_pair_item` packs two products in one launch;
* a product whose rows arrive one block at a time (the LSTM recurrence):
  :func:`recurrence_plan` (row blocks of up to TALL rows, as many per thread)
  and :func:`recurrence_panels_size`; B packed once (:func:`pack_b_item`),
  then per row block and step :func:`row_block_product`
  (:func:`recurrence_block_count`, :func:`recurrence_block`,
  :func:`recurrence_panel`);
* the stride-1 convolution: :func:`pack_tap_weights` and :func:`tap_row`.

:func:`matmul` is the whole nest as one kernel; :func:`matmul_reference` the
plain index-form loop it computes (the tests' oracle).

Race freedom and determinism: packing writes disjoint panels; a task owns its
block of C; every element is the same sequence of fused multiply-adds (p in
order inside a KC block, KC blocks in order) whichever thread runs it, so
results are bitwise identical at any thread count.  Operands are read through
strides (:class:`Operand`), so one compiled kernel serves x W^T, dz W and dz^T x
without transposed copies.

Two products' tasks mixed in one launch run slower than the two launched one
after the other once both are large (each thread then streams a different
packed B through its caches): measured under dense.SPLIT_WORK and in
lstm_backward.

**The stride-1 convolution's products** (second half), over the wide planes
of kernels.conv: :func:`tap_tile`, the same register tile reading its second
operand in place through a table of tap offsets (forward and dL/dX), in three
shapes of 12 accumulators (6 x 2, 4 x 3 and 2 x 6 vectors) so that a block
of fewer than 6 channels computes no rows it drops (:func:`tap_row`), and the
dot form of dL/dK (4 x 3 blocked, measured on a 2-core AMD Zen 3 box).
"""

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from numba import get_num_threads, prange

from .._jit import CORE_SERIAL_BELOW, F1, cpu_info, helper, kernel
from .simd import lanes, sload, sstore, vadd, vbroadcast_at, vfma, vload, vload_partial, vstore, vstore_partial, vzero

# --------------------------------------------------------------------------
# the product core
# --------------------------------------------------------------------------

#: Rows of the register tile.  6 rows x 2 vectors = 12 accumulators; with the
#: two B vectors and one broadcast that is 15 of the 16 vector registers of
#: AVX2 (AVX-512 has 32, the same tile then runs on zmm).
MR = 6

#: What the micro-kernel does with C after its p loop.
STORE = 0  # C = acc
ADD = 1  # C = C + acc
BIAS = 2  # C = acc, the accumulators started from the bias row: C = b + sum_p A B

#: gemm_task's ``accumulate`` flag as a typed value, never a literal: a call written with
#: the constant True or False compiles a separate copy of gemm_task for each value (numba
#: types literal arguments as Literal[bool]).  Measured: 6 copies of gemm_task per dtype
#: in a cold warm-up (1.6 s of 66 s, float32, Intel Xeon AVX-512) before this.
OVERWRITE = np.bool_(False)
ACCUMULATE = np.bool_(True)

#: A product is split into at least this many tasks (blocks of C), a multiple of 4
#: where the shape allows, so that 2 or 4 threads get even shares; the split
#: depends on the shape only, never on the thread count.
MIN_TASKS = 8


class Operand(NamedTuple):
    """A 2-D operand read from a flat C-contiguous buffer through strides: X[i, p] = data[i rs + p cs].

    x (N, n) as itself is ``Operand(x.ravel(), n, 1)``; W^T of W (m, n) is ``Operand(W.ravel(), 1, n)``.
    """

    data: F1
    rs: int
    cs: int


class GemmPlan(NamedTuple):
    """One product C (m, n) (+)= A (m, k) B (k, n): its shapes and cache blocks (see :func:`gemm_plan`)."""

    m: int
    n: int
    k: int
    kc: int
    mc: int
    nc: int


class Packed(NamedTuple):
    """Packing buffers (written by the kernel): ap >= ceil(m / MR) MR k, bp >= k ceil(n / NR) NR values."""

    ap: F1
    bp: F1


class Tile(NamedTuple):
    """One micro-kernel call: packed panel offsets ao, bo; C offset co of the tile's top-left
    element; mr x nr its valid part (edge tiles); j the tile's first column (for the bias)."""

    ao: int
    bo: int
    co: int
    mr: int
    nr: int
    j: int


def nr_of(dtype) -> int:
    """NR, the columns of the register tile: two vectors of the dtype."""
    return 2 * cpu_info()["lanes"][np.dtype(dtype).name]


def cache_blocks(dtype) -> tuple:
    """(KC, MC, NC) for a dtype (see :func:`_cache_blocks`)."""
    return _cache_blocks(np.dtype(dtype).name)


@lru_cache(maxsize=None)
def _cache_blocks(dtype) -> tuple:
    """(KC, MC, NC) from the cache sizes of the CPU (s = element size, NR = 2 W):

    KC = L1d / (2 NR s)   a KC x NR micro-panel of B fills half of L1d (every A
                          micro-panel of the block reuses it; the other half holds
                          the streamed A panel and C lines) -> multiple of 8 in [64, 1024]
    MC = L2 / (2 KC s)    an MC x KC block of packed A fills half of L2 -> multiple of MR
    NC = L3 / (2 KC s)    a KC x NC block of packed B fills half of L3 -> multiple of NR

    AMD Zen 3 (32 KiB / 512 KiB / 32 MiB): float32 256, 252, 16384; float64 256, 126, 8192.
    """
    caches = cpu_info()["caches"]
    s = np.dtype(dtype).itemsize
    nr = nr_of(dtype)
    kc = min(1024, max(64, caches["L1d"] // (2 * nr * s) // 8 * 8))
    mc = max(MR, caches["L2"] // (2 * kc * s) // MR * MR)
    nc = max(nr, caches["L3"] // (2 * kc * s) // nr * nr)
    return kc, mc, nc


def gemm_plan(m: int, n: int, k: int, dtype) -> GemmPlan:
    """The blocks one product uses: the cache blocks evened out over the shape (no tiny last
    block) and at least MIN_TASKS tasks.  Depends on the shapes, dtype and caches only."""
    return _gemm_plan(m, n, k, np.dtype(dtype))


@lru_cache(maxsize=4096)  # a training step asks for the same few plans every call (a miss costs ~10 us)
def _gemm_plan(m: int, n: int, k: int, dtype: np.dtype) -> GemmPlan:
    m = int(m)
    n = int(n)
    k = int(k)
    kc, mc, nc = cache_blocks(dtype)
    nr = nr_of(dtype)
    n_kb = max(1, -(-k // kc))
    kcb = max(1, -(-k // n_kb))
    m_panels = max(1, -(-m // MR))
    n_panels = max(1, -(-n // nr))
    # blocks of panels: as few as the cache blocks allow, then more columns, then more rows,
    # until there are MIN_TASKS tasks, a multiple of 4 where the panels allow.  Rows are split
    # only for a product too narrow for MIN_TASKS column blocks: an LSTM's dx (T N, I) and
    # dW (4H, H + I) had 2-5 tasks for 2 threads before (char-LM sizes: dx 3 and dW 5, so
    # one thread ran 2 of 3 and 3 of 5 task-times).
    n_ib = _blocks(m_panels, -(-m_panels // (mc // MR)))
    n_jb = _blocks_for_tasks(n_panels, max(-(-n_panels // (nc // nr)), -(-MIN_TASKS // n_ib)), n_ib)
    n_ib = _blocks_for_tasks(m_panels, max(n_ib, -(-MIN_TASKS // n_jb)), n_jb)
    return GemmPlan(m, n, k, kcb, MR * -(-m_panels // n_ib), nr * -(-n_panels // n_jb))


def _blocks(panels: int, want: int) -> int:
    """The blocks ``panels`` panels really make when split into ``want`` blocks of equal
    whole panels: 5 panels in 4 blocks are blocks of 2, so 3 of them."""
    want = min(max(1, want), panels)
    return -(-panels // -(-panels // want))


def _blocks_for_tasks(panels: int, want: int, other: int) -> int:
    """The blocks of ``panels`` panels from ``want`` up, asked for one more at a time until
    they times ``other`` (the blocks of the other dimension) are a multiple of 4 or every
    panel is a block of its own."""
    while (_blocks(panels, want) * other) % 4 and want < panels:
        want += 1
    return _blocks(panels, want)


#: The plan of a product nobody reads (dense's dL/dx of a model's input): no packing items, no
#: tasks, so a kernel that runs two products in one launch runs only the other one.
NO_PRODUCT = GemmPlan(0, 0, 0, 1, 1, 1)


def packed_sizes(plan: GemmPlan, dtype) -> tuple:
    """(size of ap, size of bp) for a plan: A and B zero-padded to MR rows / NR columns, all of k."""
    return _packed_sizes(plan, np.dtype(dtype))


@lru_cache(maxsize=4096)
def _packed_sizes(plan: GemmPlan, dtype: np.dtype) -> tuple:
    nr = nr_of(dtype)
    return max(1, -(-plan.m // MR) * MR * plan.k), max(1, plan.k * -(-plan.n // nr) * nr)


def tile_shape(dtype) -> tuple:
    """(MR, NR): the rows and columns of the register tile for a dtype."""
    return MR, nr_of(dtype)


def packed_b_size(plan: GemmPlan, dtype) -> int:
    """Values of the packed B of a plan alone (:func:`pack_b_item`; :func:`row_block_product` reads it)."""
    return packed_sizes(plan, dtype)[1]


def pack_tap_weights(w3: np.ndarray) -> np.ndarray:
    """Weights (G, rows, R) packed for :func:`tap_row`: per group and row block, for each
    term t the MR values w3[g, r0 + i, t] (zeros past the group's rows), flattened."""
    G, rows, R = w3.shape
    blocks = -(-rows // MR)
    padded = np.zeros((G, blocks * MR, R), w3.dtype)
    padded[:, :rows] = w3
    return np.ascontiguousarray(padded.reshape(G, blocks, MR, R).transpose(0, 1, 3, 2)).reshape(-1)


@helper
def matmul_reference(c, ldc, a, b, bias, accumulate, plan):
    """c[i ldc + j] (+)= bias[j] + sum_p A[i, p] B[p, j]: the plain loop the product core computes."""
    for i in range(plan.m):
        for j in range(plan.n):
            acc = c.dtype.type(0)
            for p in range(plan.k):
                acc += a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs]
            if accumulate:
                c[i * ldc + j] += acc
            elif bias.shape[0] > 0:
                c[i * ldc + j] = bias[j] + acc
            else:
                c[i * ldc + j] = acc


@helper
def _put_row(c, p, w, v0, v1, add):
    """c.flat[p : p + 2w] (+)= (v0, v1): one row of a full tile."""
    if add:
        v0 = vadd(vload(c, p), v0)
        v1 = vadd(vload(c, p + w), v1)
    vstore(c, p, v0)
    vstore(c, p + w, v1)


@helper
def _put_row_partial(c, p, w, nr, v0, v1, add):
    """The first nr columns of one row of an edge tile: masked, lanes past nr are not touched."""
    if add:
        v0 = vadd(vload_partial(c, p, nr), v0)
        v1 = vadd(vload_partial(c, p + w, nr - w), v1)
    vstore_partial(c, p, v0, nr)
    vstore_partial(c, p + w, v1, nr - w)


@helper
def micro_kernel(kc, packed, tile, c, ldc, bias, mode):
    """C[tile] (+)= sum_{p < kc} Ap-panel[p, :]^T Bp-panel[p, :]: the MR x NR register tile.

    ``mode`` STORE, ADD or BIAS (module constants); bias is read in BIAS mode only.
    """
    ap = packed.ap
    bp = packed.bp
    w = lanes(ap)
    if mode == BIAS:
        r0 = vload_partial(bias, tile.j, tile.nr)
        r1 = vload_partial(bias, tile.j + w, tile.nr - w)
    else:
        r0 = vzero(ap)
        r1 = vzero(ap)
    # accumulator c<row><vector>
    c00 = r0
    c01 = r1
    c10 = r0
    c11 = r1
    c20 = r0
    c21 = r1
    c30 = r0
    c31 = r1
    c40 = r0
    c41 = r1
    c50 = r0
    c51 = r1
    ao = tile.ao
    bo = tile.bo
    # one rank-1 update per p: 2 vector loads of B, 6 broadcasts of A, 12 fused multiply-adds
    for _ in range(kc):
        b0 = vload(bp, bo)
        b1 = vload(bp, bo + w)
        a = vbroadcast_at(ap, ao)
        c00 = vfma(a, b0, c00)
        c01 = vfma(a, b1, c01)
        a = vbroadcast_at(ap, ao + 1)
        c10 = vfma(a, b0, c10)
        c11 = vfma(a, b1, c11)
        a = vbroadcast_at(ap, ao + 2)
        c20 = vfma(a, b0, c20)
        c21 = vfma(a, b1, c21)
        a = vbroadcast_at(ap, ao + 3)
        c30 = vfma(a, b0, c30)
        c31 = vfma(a, b1, c31)
        a = vbroadcast_at(ap, ao + 4)
        c40 = vfma(a, b0, c40)
        c41 = vfma(a, b1, c41)
        a = vbroadcast_at(ap, ao + 5)
        c50 = vfma(a, b0, c50)
        c51 = vfma(a, b1, c51)
        ao += MR
        bo += 2 * w
    add = mode == ADD
    co = tile.co
    if tile.mr == MR and tile.nr == 2 * w:
        _put_row(c, co, w, c00, c01, add)
        _put_row(c, co + ldc, w, c10, c11, add)
        _put_row(c, co + 2 * ldc, w, c20, c21, add)
        _put_row(c, co + 3 * ldc, w, c30, c31, add)
        _put_row(c, co + 4 * ldc, w, c40, c41, add)
        _put_row(c, co + 5 * ldc, w, c50, c51, add)
    else:
        # edge tile: rows past mr hold the products of zero-padded A rows and are dropped
        _put_row_partial(c, co, w, tile.nr, c00, c01, add)
        if tile.mr > 1:
            _put_row_partial(c, co + ldc, w, tile.nr, c10, c11, add)
        if tile.mr > 2:
            _put_row_partial(c, co + 2 * ldc, w, tile.nr, c20, c21, add)
        if tile.mr > 3:
            _put_row_partial(c, co + 3 * ldc, w, tile.nr, c30, c31, add)
        if tile.mr > 4:
            _put_row_partial(c, co + 4 * ldc, w, tile.nr, c40, c41, add)
        if tile.mr > 5:
            _put_row_partial(c, co + 5 * ldc, w, tile.nr, c50, c51, add)


@helper
def pack_a_panel(a, m, i0, s, kc, ap, dst, h):
    """ap[dst + p h + r] = A[i0 + r, s + p] for p < kc, r < h (zero rows past m): a panel of h rows
    (MR for the core's tiles, TALL for a recurrence's tall row blocks).

    Row-major A (cs = 1: x, dz): one pass per row, writes strided by h; A stored
    transposed (rs = 1: dz^T): per p, h contiguous values, i.e. a straight copy.
    sload / sstore skip numba's negative-index code, which kept these loops scalar.
    """
    mr = min(h, m - i0)
    if a.cs == 1:
        for r in range(mr):
            src = (i0 + r) * a.rs + s
            for p in range(kc):
                sstore(ap, dst + p * h + r, sload(a.data, src + p))
    elif a.rs == 1 and mr == h:
        for p in range(kc):
            src = (s + p) * a.cs + i0
            d = dst + p * h
            for r in range(h):
                sstore(ap, d + r, sload(a.data, src + r))
        return
    else:
        for p in range(kc):
            src = (s + p) * a.cs + i0 * a.rs
            for r in range(mr):
                sstore(ap, dst + p * h + r, sload(a.data, src + r * a.rs))
    for p in range(kc):
        for r in range(mr, h):
            sstore(ap, dst + p * h + r, 0.0)


@helper
def pack_b_panel(b, n, j0, s, kc, bp, dst):
    """bp[dst + p NR + j] = B[s + p, j0 + j] for p < kc, j < NR (zero columns past n).

    Row-major B (cs = 1: W in dz W, x in dz^T x) already is the packed layout: two
    vector copies per p (masked on the edge panel, which also zero-fills it);
    B = W^T of W stored (n, k) (rs = 1): one contiguous pass per column.
    """
    w = lanes(bp)
    nrf = 2 * w
    nr = min(nrf, n - j0)
    if b.cs == 1:
        for p in range(kc):
            src = (s + p) * b.rs + j0
            d = dst + p * nrf
            if nr == nrf:
                vstore(bp, d, vload(b.data, src))
                vstore(bp, d + w, vload(b.data, src + w))
            else:
                vstore(bp, d, vload_partial(b.data, src, nr))
                vstore(bp, d + w, vload_partial(b.data, src + w, nr - w))
        return
    if b.rs == 1:
        for j in range(nr):
            src = (j0 + j) * b.cs + s
            for p in range(kc):
                sstore(bp, dst + p * nrf + j, sload(b.data, src + p))
    else:
        for p in range(kc):
            src = (s + p) * b.rs + j0 * b.cs
            for j in range(nr):
                sstore(bp, dst + p * nrf + j, sload(b.data, src + j * b.cs))
    for p in range(kc):
        for j in range(nr, nrf):
            sstore(bp, dst + p * nrf + j, 0.0)


@helper
def pack_count(packed, plan):
    """The packing work items of a plan: one per (KC block, A or B micro-panel)."""
    nrf = 2 * lanes(packed.bp)
    per_block = (plan.m + MR - 1) // MR + (plan.n + nrf - 1) // nrf
    return ((plan.k + plan.kc - 1) // plan.kc) * per_block


@helper
def pack_item(t, a, b, packed, plan):
    """Pack work item t: one A or B micro-panel of one KC block (disjoint writes)."""
    ap = packed.ap
    bp = packed.bp
    nrf = 2 * lanes(bp)
    mp = (plan.m + MR - 1) // MR
    np_ = (plan.n + nrf - 1) // nrf
    per_block = mp + np_
    s = (t // per_block) * plan.kc
    q = t % per_block
    kc = min(plan.kc, plan.k - s)
    if q < mp:
        pack_a_panel(a, plan.m, q * MR, s, kc, ap, s * mp * MR + q * MR * kc, MR)
    else:
        # B micro-panel q - mp of this KC block, where pack_b_item puts it
        pack_b_item((t // per_block) * np_ + q - mp, b, bp, plan)


@helper
def pack_pair_item(t, n_first, a1, b1, p1, plan1, a2, b2, p2, plan2):
    """Item t of two products packed in one launch: items below n_first = pack_count(p1, plan1)
    are the first product's, the rest the second's."""
    if t < n_first:
        pack_item(t, a1, b1, p1, plan1)
    else:
        pack_item(t - n_first, a2, b2, p2, plan2)


@helper
def pack_b_count(bp, plan):
    """The packing items of B alone (for :func:`row_block_product`): one per (KC block, B micro-panel)."""
    nrf = 2 * lanes(bp)
    return ((plan.n + nrf - 1) // nrf) * ((plan.k + plan.kc - 1) // plan.kc)


@helper
def pack_b_item(q, b, bp, plan):
    """Pack item q of B alone, into the layout pack_item gives B: micro-panel q % panels of KC block q // panels."""
    nrf = 2 * lanes(bp)
    panels = (plan.n + nrf - 1) // nrf
    s = (q // panels) * plan.kc
    j0 = (q % panels) * nrf
    kc = min(plan.kc, plan.k - s)
    pack_b_panel(b, plan.n, j0, s, kc, bp, s * panels * nrf + j0 * kc)


@helper
def task_count(plan):
    """The tasks (blocks of C) of a plan."""
    return ((plan.m + plan.mc - 1) // plan.mc) * ((plan.n + plan.nc - 1) // plan.nc)


@helper
def task_block(t, plan):
    """(i0, i1, j0, j1): the rows and columns of C that task t owns."""
    n_ib = (plan.m + plan.mc - 1) // plan.mc
    i0 = (t % n_ib) * plan.mc
    j0 = (t // n_ib) * plan.nc
    return i0, min(plan.m, i0 + plan.mc), j0, min(plan.n, j0 + plan.nc)


@helper
def gemm_task(t, c, ldc, bias, accumulate, packed, plan):
    """Task t of C = A B (+ bias) or C += A B, from the packed operands, over all of p."""
    nrf = 2 * lanes(packed.ap)
    mpad = (plan.m + MR - 1) // MR * MR
    npad = (plan.n + nrf - 1) // nrf * nrf
    i0, i1, j0, j1 = task_block(t, plan)
    for s in range(0, plan.k, plan.kc):
        kc = min(plan.kc, plan.k - s)
        if s > 0 or accumulate:
            mode = ADD
        elif bias.shape[0] > 0:
            mode = BIAS
        else:
            mode = STORE
        for j in range(j0, j1, nrf):
            for i in range(i0, i1, MR):
                tile = Tile(s * mpad + i * kc, s * npad + j * kc, i * ldc + j, min(MR, plan.m - i), min(nrf, plan.n - j), j)
                micro_kernel(kc, packed, tile, c, ldc, bias, mode)
    if plan.k == 0 and not accumulate:
        # an empty sum: C = bias (or 0)
        for i in range(i0, i1):
            for j in range(j0, j1):
                c[i * ldc + j] = bias[j] if bias.shape[0] > 0 else 0


@helper
def row_block_count(rows):
    """The row blocks (of MR rows, the last one shorter) of ``rows`` rows."""
    return (rows + MR - 1) // MR


@helper
def row_block(blk, rows):
    """(r0, nb): the first row of row block blk and its row count (nb <= MR)."""
    r0 = MR * blk
    return r0, min(MR, rows - r0)


# --------------------------------------------------------------------------
# a product whose rows arrive one block at a time (the LSTM recurrence)
# --------------------------------------------------------------------------

#: The tallest row block of a recurrence: 8 rows x 2 vectors = 16 accumulators, with the
#: two B vectors and one broadcast 19 registers, which AVX-512's 32 hold (AVX2's 16 do
#: not, so there it is MR).  Why a taller tile than the core's: time is serial inside a
#: block, so the blocks are the only parallel work; N = 16 sequences made blocks of
#: 6, 6 and 4 rows, one thread ran 12 rows' tiles and the other 4 (the 4-row block
#: costs a full 6-row tile).  Two blocks of 8 give each thread 8.
TALL = 8 if cpu_info()["vector_bits"] >= 512 else MR


def recurrence_plan(rows: int, n: int, k: int, dtype) -> GemmPlan:
    """The plan of C (rows, n) (+)= A (rows, k) B (k, n) computed one row block at a time
    (:func:`row_block_product`): gemm_plan's KC, and mc = the rows of one block.

    The blocks are as few as TALL allows, their count rounded up to a multiple of the
    thread count (so that every thread runs as many blocks; above MR rows only, where a
    second block does not cost a second full tile for nothing) and their rows evened
    out.  Which block a row lands in does not change its sums (each C element is the
    same fused multiply-adds in order), so results stay bitwise the same at any thread
    count.  Buffers are sized from the plan (:func:`recurrence_panels_size`), so a plan
    made at one thread count is valid at any other.
    """
    return _recurrence_plan(int(rows), int(n), int(k), np.dtype(dtype), get_num_threads())


@lru_cache(maxsize=4096)
def _recurrence_plan(rows: int, n: int, k: int, dtype: np.dtype, threads: int) -> GemmPlan:
    blocks = max(1, -(-rows // TALL))
    if rows > MR:
        blocks = -(-blocks // threads) * threads
    height = max(1, -(-rows // blocks))
    return gemm_plan(rows, n, k, dtype)._replace(mc=height, nc=max(1, n))


def recurrence_panels_size(plan: GemmPlan, width: int) -> int:
    """Values of a buffer holding one TALL x width panel per row block of a recurrence plan."""
    return max(1, -(-plan.m // plan.mc) * TALL * int(width))


@helper
def recurrence_block_count(plan):
    """The row blocks of a :func:`recurrence_plan` (of plan.mc rows, the last one shorter)."""
    return (plan.m + plan.mc - 1) // plan.mc


@helper
def recurrence_block(blk, plan):
    """(r0, nb): the first row of row block blk and its row count (nb <= plan.mc <= TALL)."""
    r0 = plan.mc * blk
    return r0, min(plan.mc, plan.m - r0)


@helper
def recurrence_panel(buf, blk, width):
    """Row block blk's panel of TALL x width values in a buffer of :func:`recurrence_panels_size`."""
    return buf[blk * TALL * width:(blk + 1) * TALL * width]


@helper
def row_block_height(nb):
    """The panel rows of a row block of nb rows: TALL (the tall tile) above MR rows, else MR
    (the core's tile).  TALL = MR makes it the constant MR, and LLVM drops the tall branch."""
    return TALL if TALL > MR and nb > MR else MR


@helper
def pack_row_block(a, r0, nb, ap, plan):
    """Rows r0 .. r0 + nb - 1 of A packed into one row block's panel ap of
    :func:`row_block_height` rows, per KC block (zero rows past nb)."""
    h = row_block_height(nb)
    for s in range(0, plan.k, plan.kc):
        kc = min(plan.kc, plan.k - s)
        pack_a_panel(a, r0 + nb, r0, s, kc, ap, s * h, h)


@helper
def tall_kernel(kc, packed, tile, c, ldc, add):
    """C[tile] (+)= sum_{p < kc} Ap-panel[p, :]^T Bp-panel[p, :]: micro_kernel with TALL = 8 rows
    (A panels of 8 rows; no bias: the recurrence adds to z or stores dL/dh)."""
    ap = packed.ap
    bp = packed.bp
    w = lanes(ap)
    c00 = vzero(ap)
    c01 = vzero(ap)
    c10 = vzero(ap)
    c11 = vzero(ap)
    c20 = vzero(ap)
    c21 = vzero(ap)
    c30 = vzero(ap)
    c31 = vzero(ap)
    c40 = vzero(ap)
    c41 = vzero(ap)
    c50 = vzero(ap)
    c51 = vzero(ap)
    c60 = vzero(ap)
    c61 = vzero(ap)
    c70 = vzero(ap)
    c71 = vzero(ap)
    ao = tile.ao
    bo = tile.bo
    # one rank-1 update per p: 2 vector loads of B, 8 broadcasts of A, 16 fused multiply-adds
    for _ in range(kc):
        b0 = vload(bp, bo)
        b1 = vload(bp, bo + w)
        a = vbroadcast_at(ap, ao)
        c00 = vfma(a, b0, c00)
        c01 = vfma(a, b1, c01)
        a = vbroadcast_at(ap, ao + 1)
        c10 = vfma(a, b0, c10)
        c11 = vfma(a, b1, c11)
        a = vbroadcast_at(ap, ao + 2)
        c20 = vfma(a, b0, c20)
        c21 = vfma(a, b1, c21)
        a = vbroadcast_at(ap, ao + 3)
        c30 = vfma(a, b0, c30)
        c31 = vfma(a, b1, c31)
        a = vbroadcast_at(ap, ao + 4)
        c40 = vfma(a, b0, c40)
        c41 = vfma(a, b1, c41)
        a = vbroadcast_at(ap, ao + 5)
        c50 = vfma(a, b0, c50)
        c51 = vfma(a, b1, c51)
        a = vbroadcast_at(ap, ao + 6)
        c60 = vfma(a, b0, c60)
        c61 = vfma(a, b1, c61)
        a = vbroadcast_at(ap, ao + 7)
        c70 = vfma(a, b0, c70)
        c71 = vfma(a, b1, c71)
        ao += TALL
        bo += 2 * w
    co = tile.co
    # masked stores for every tile, full or not: one copy of the store code (a second,
    # unmasked copy for full tiles cost compile time and no measurable speed: the
    # stores run once per KC block of a tile whose p loop is KC long)
    _put_row_partial(c, co, w, tile.nr, c00, c01, add)
    _put_row_partial(c, co + ldc, w, tile.nr, c10, c11, add)
    _put_row_partial(c, co + 2 * ldc, w, tile.nr, c20, c21, add)
    _put_row_partial(c, co + 3 * ldc, w, tile.nr, c30, c31, add)
    _put_row_partial(c, co + 4 * ldc, w, tile.nr, c40, c41, add)
    _put_row_partial(c, co + 5 * ldc, w, tile.nr, c50, c51, add)
    _put_row_partial(c, co + 6 * ldc, w, tile.nr, c60, c61, add)
    if tile.mr > 7:
        # a block of 7 rows: row 7 of the panel is zero padding, dropped
        _put_row_partial(c, co + 7 * ldc, w, tile.nr, c70, c71, add)


@helper
def row_block_product(a, r0, nb, packed, plan, c, ldc, accumulate):
    """C[r, :] (+)= sum_p A[r0 + r, p] B[p, :] for the nb rows r < nb of one row block, on a packed B.

    For a product whose rows arrive one block at a time (the LSTM's recurrence:
    row t N + n needs step t - 1 done); plan from :func:`recurrence_plan`.
    packed.ap is the block's own panel (:func:`recurrence_panel`); packed.bp
    all of B, packed once by :func:`pack_b_item`.  The block's rows of A are
    packed per KC block, then one row of register tiles runs along all of B's
    columns: TALL x NR tiles for a block of more than MR rows, else the core's
    MR x NR.  C is flat with row length ldc and starts at the block's first row;
    with ``accumulate`` the tiles add to C, otherwise the first KC block stores.
    """
    ap = packed.ap
    nrf = 2 * lanes(ap)
    npad = (plan.n + nrf - 1) // nrf * nrf
    pack_row_block(a, r0, nb, ap, plan)
    h = row_block_height(nb)
    tall = h > MR
    for s in range(0, plan.k, plan.kc):
        kc = min(plan.kc, plan.k - s)
        mode = ADD if s > 0 or accumulate else STORE
        for j in range(0, plan.n, nrf):
            tile = Tile(s * h, s * npad + j * kc, j, nb, min(nrf, plan.n - j), j)
            if tall:
                tall_kernel(kc, packed, tile, c, ldc, mode == ADD)
            else:
                micro_kernel(kc, packed, tile, c, ldc, ap[:0], mode)


@kernel(serial_below=CORE_SERIAL_BELOW)
def matmul(c: F1, ldc: int, a: Operand, b: Operand, bias: F1, accumulate: bool, packed: Packed, plan: GemmPlan):
    """C[i, j] = bias[j] + sum_p A[i, p] B[p, j] (bias of shape (0,): none), or C += A B with ``accumulate``.

    c: the flat C-contiguous buffer of C with row length ldc; a, b: the operands
    (:class:`Operand`); packed: the packing buffers (:func:`packed_sizes`);
    plan from :func:`gemm_plan`.  Parallel over packing items, then over tasks
    (blocks of C, each owning its elements).
    """
    for t in prange(pack_count(packed, plan)):
        pack_item(np.int64(t), a, b, packed, plan)
    for t in prange(task_count(plan)):
        gemm_task(np.int64(t), c, ldc, bias, accumulate, packed, plan)


# --------------------------------------------------------------------------
# the stride-1 convolution (kernels.conv)
# --------------------------------------------------------------------------
# A tap offset table ``tapoff`` (R,) lists, for term t of a sum, the flat offset
# of the term's source (its plane and its shift inside the plane) from a base
# address.  The dot form below reads ``taps`` (R, 2) = (row, shift) instead.
# Positions run over unsigned indices: with signed ones numba's negative-index
# wraparound branch blocked SIMD (measured).


@helper
def tap_tile(wp, wo, srcf, sbase, tapoff, outf, co, ldo, mr):
    """outf[co + i ldo + q] = sum_t wp[wo + t MR + i] srcf[sbase + tapoff[t] + q] for i < mr, q < NR.

    The direct convolution's register tile: MR output rows (channels) x NR
    consecutive wide positions, summed over every term t of the tap table.
    ``wp`` holds the weights packed MR rows per term (for each t, MR consecutive
    values); the source is read in place, one contiguous run of NR positions
    per term (the wide layout makes every tap a constant offset), so per term:
    2 vector loads, MR broadcasts, 2 MR fused multiply-adds, as the product
    core's micro-kernel.  Rows past mr (zero weights) are not stored.
    """
    w = lanes(wp)
    c00 = vzero(wp)
    c01 = c00
    c10 = c00
    c11 = c00
    c20 = c00
    c21 = c00
    c30 = c00
    c31 = c00
    c40 = c00
    c41 = c00
    c50 = c00
    c51 = c00
    ao = wo
    for t in range(tapoff.shape[0]):
        src = sbase + tapoff[t]
        b0 = vload(srcf, src)
        b1 = vload(srcf, src + w)
        a = vbroadcast_at(wp, ao)
        c00 = vfma(a, b0, c00)
        c01 = vfma(a, b1, c01)
        a = vbroadcast_at(wp, ao + 1)
        c10 = vfma(a, b0, c10)
        c11 = vfma(a, b1, c11)
        a = vbroadcast_at(wp, ao + 2)
        c20 = vfma(a, b0, c20)
        c21 = vfma(a, b1, c21)
        a = vbroadcast_at(wp, ao + 3)
        c30 = vfma(a, b0, c30)
        c31 = vfma(a, b1, c31)
        a = vbroadcast_at(wp, ao + 4)
        c40 = vfma(a, b0, c40)
        c41 = vfma(a, b1, c41)
        a = vbroadcast_at(wp, ao + 5)
        c50 = vfma(a, b0, c50)
        c51 = vfma(a, b1, c51)
        ao += MR
    _put_row(outf, co, w, c00, c01, False)
    if mr > 1:
        _put_row(outf, co + ldo, w, c10, c11, False)
    if mr > 2:
        _put_row(outf, co + 2 * ldo, w, c20, c21, False)
    if mr > 3:
        _put_row(outf, co + 3 * ldo, w, c30, c31, False)
    if mr > 4:
        _put_row(outf, co + 4 * ldo, w, c40, c41, False)
    if mr > 5:
        _put_row(outf, co + 5 * ldo, w, c50, c51, False)


@helper
def tap_tile_4x3(wp, wo, srcf, sbase, tapoff, outf, co, ldo, mr):
    """:func:`tap_tile` for a block of at most 4 rows: 4 rows x 3 vectors (3 W positions).

    The same 12 accumulators as the 6 x 2 tile over 4 rows instead of 6, so
    a block of 4 rows computes none it drops (of 3 rows: one); per term 3 vector loads, 4 broadcasts, 12 fused
    multiply-adds.  The three source vectors are loaded first, then one
    broadcast at a time: 12 + 3 + 1 = 16 registers, AVX2's count.
    """
    w = lanes(wp)
    c00 = vzero(wp)
    c01 = c00
    c02 = c00
    c10 = c00
    c11 = c00
    c12 = c00
    c20 = c00
    c21 = c00
    c22 = c00
    c30 = c00
    c31 = c00
    c32 = c00
    ao = wo
    for t in range(tapoff.shape[0]):
        src = sbase + tapoff[t]
        b0 = vload(srcf, src)
        b1 = vload(srcf, src + w)
        b2 = vload(srcf, src + 2 * w)
        a = vbroadcast_at(wp, ao)
        c00 = vfma(a, b0, c00)
        c01 = vfma(a, b1, c01)
        c02 = vfma(a, b2, c02)
        a = vbroadcast_at(wp, ao + 1)
        c10 = vfma(a, b0, c10)
        c11 = vfma(a, b1, c11)
        c12 = vfma(a, b2, c12)
        a = vbroadcast_at(wp, ao + 2)
        c20 = vfma(a, b0, c20)
        c21 = vfma(a, b1, c21)
        c22 = vfma(a, b2, c22)
        a = vbroadcast_at(wp, ao + 3)
        c30 = vfma(a, b0, c30)
        c31 = vfma(a, b1, c31)
        c32 = vfma(a, b2, c32)
        ao += MR
    _put_row3(outf, co, w, c00, c01, c02)
    if mr > 1:
        _put_row3(outf, co + ldo, w, c10, c11, c12)
    if mr > 2:
        _put_row3(outf, co + 2 * ldo, w, c20, c21, c22)
    if mr > 3:
        _put_row3(outf, co + 3 * ldo, w, c30, c31, c32)


@helper
def tap_tile_2x6(wp, wo, srcf, sbase, tapoff, outf, co, ldo, mr):
    """:func:`tap_tile` for a block of at most 2 rows: 2 rows x 6 vectors (6 W positions).

    Per term 6 vector loads, 2 broadcasts, 12 fused multiply-adds.  The two
    broadcasts come first, then one source vector at a time: 12 + 2 + 1 = 15
    registers.
    """
    w = lanes(wp)
    c00 = vzero(wp)
    c01 = c00
    c02 = c00
    c03 = c00
    c04 = c00
    c05 = c00
    c10 = c00
    c11 = c00
    c12 = c00
    c13 = c00
    c14 = c00
    c15 = c00
    ao = wo
    for t in range(tapoff.shape[0]):
        src = sbase + tapoff[t]
        a0 = vbroadcast_at(wp, ao)
        a1 = vbroadcast_at(wp, ao + 1)
        b = vload(srcf, src)
        c00 = vfma(a0, b, c00)
        c10 = vfma(a1, b, c10)
        b = vload(srcf, src + w)
        c01 = vfma(a0, b, c01)
        c11 = vfma(a1, b, c11)
        b = vload(srcf, src + 2 * w)
        c02 = vfma(a0, b, c02)
        c12 = vfma(a1, b, c12)
        b = vload(srcf, src + 3 * w)
        c03 = vfma(a0, b, c03)
        c13 = vfma(a1, b, c13)
        b = vload(srcf, src + 4 * w)
        c04 = vfma(a0, b, c04)
        c14 = vfma(a1, b, c14)
        b = vload(srcf, src + 5 * w)
        c05 = vfma(a0, b, c05)
        c15 = vfma(a1, b, c15)
        ao += MR
    _put_row3(outf, co, w, c00, c01, c02)
    _put_row3(outf, co + 3 * w, w, c03, c04, c05)
    if mr > 1:
        _put_row3(outf, co + ldo, w, c10, c11, c12)
        _put_row3(outf, co + ldo + 3 * w, w, c13, c14, c15)


@helper
def _put_row3(c, p, w, v0, v1, v2):
    """c.flat[p : p + 3w] = (v0, v1, v2)."""
    vstore(c, p, v0)
    vstore(c, p + w, v1)
    vstore(c, p + 2 * w, v2)


@helper
def tap_row(wp, blk, srcf, sbase, tapoff, outf, co, ldo, mr):
    """One row of register tiles along the ldo wide positions of mr output rows:
    outf[co + i ldo + q] = sum_t W[blk][t, i] srcf[sbase + tapoff[t] + q] for i < mr, q < ldo
    (the last tile runs to a multiple of NR), with W[blk] row block blk of :func:`pack_tap_weights` (group-major).

    The tile's shape follows the block's rows, so a short block (the last one
    of M or C channels, or C = 1 and C = 3 inputs) does not compute rows it
    drops: mr <= 2 runs 2 x 6-vector tiles, mr <= 4 pairs of 4 x 3-vector
    tiles, each only where its 6 W positions lie inside the row, and 6 x
    2-vector tiles (:func:`tap_tile`) finish it.  Those start at a multiple of
    NR = 2 W, so they end where 6 x 2 tiles alone would.  Every element is the
    same sum over t in order in any tile shape, so the results are bitwise
    those of 6 x 2 tiles alone.

    Measured (AMD EPYC Zen 3, AVX2, 2 threads, the forward's tap rows alone,
    min of 5 interleaved rounds, 6 x 2 tiles alone -> these): float32 M = 8
    (5 x 5 taps over 24 x 24) 0.126 -> 0.082 ms; M = 32 (16 x 3 x 3, 30 x 30)
    1.86 -> 1.65 ms; M = 64 (64 x 3 x 3) 5.42 -> 5.35 ms; rows of dL/dX with
    C = 1 0.365 -> 0.140 ms, C = 3 0.416 -> 0.243 ms; float64 the same ratios.
    """
    w = lanes(wp)
    wo = blk * tapoff.shape[0] * MR
    q0 = 0
    if mr <= 2:
        while q0 + 6 * w <= ldo:
            tap_tile_2x6(wp, wo, srcf, sbase + q0, tapoff, outf, co + q0, ldo, mr)
            q0 += 6 * w
    if mr <= 4:
        while q0 + 6 * w <= ldo:
            tap_tile_4x3(wp, wo, srcf, sbase + q0, tapoff, outf, co + q0, ldo, mr)
            tap_tile_4x3(wp, wo, srcf, sbase + q0 + 3 * w, tapoff, outf, co + q0 + 3 * w, ldo, mr)
            q0 += 6 * w
    while q0 < ldo:
        tap_tile(wp, wo, srcf, sbase + q0, tapoff, outf, co + q0, ldo, mr)
        q0 += 2 * w


@helper
def dot_taps_4x3(d, n, m, f, x, ci, taps, t, cnt):
    """The 12 sums sum_p d[n, m + q, f + p] x[n, ci, taps[t + e, 1] + p] for q < 4, e < 3 (p < cnt).

    Returned in the order (q, e) = (0, 0), (0, 1), (0, 2), (1, 0), ...  12
    accumulators: 7 loads feed 12 multiply-adds per position (the dense
    forward's 4 x 3), vectorised along p (reassoc is allowed).
    """
    u0 = np.uint64(taps[t, 1])
    u1 = np.uint64(taps[t + 1, 1])
    u2 = np.uint64(taps[t + 2, 1])
    a00 = d.dtype.type(0)
    a01 = a00
    a02 = a00
    a10 = a00
    a11 = a00
    a12 = a00
    a20 = a00
    a21 = a00
    a22 = a00
    a30 = a00
    a31 = a00
    a32 = a00
    for p in range(np.uint64(cnt)):
        d0 = d[n, m, f + p]
        d1 = d[n, m + 1, f + p]
        d2 = d[n, m + 2, f + p]
        d3 = d[n, m + 3, f + p]
        x0 = x[n, ci, u0 + p]
        x1 = x[n, ci, u1 + p]
        x2 = x[n, ci, u2 + p]
        a00 += d0 * x0
        a01 += d0 * x1
        a02 += d0 * x2
        a10 += d1 * x0
        a11 += d1 * x1
        a12 += d1 * x2
        a20 += d2 * x0
        a21 += d2 * x1
        a22 += d2 * x2
        a30 += d3 * x0
        a31 += d3 * x1
        a32 += d3 * x2
    return a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32


@helper
def dot_taps_1x1(d, n, m, f, x, ci, off, cnt):
    """sum_p d[n, m, f + p] x[n, ci, off + p] for p < cnt (edges)."""
    acc = d.dtype.type(0)
    u0 = np.uint64(off)
    for p in range(np.uint64(cnt)):
        acc += d[n, m, f + p] * x[n, ci, u0 + p]
    return acc
