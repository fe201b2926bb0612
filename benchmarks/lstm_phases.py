"""Where the LSTM forward's and backward's time goes, phase by phase (issue 23).

    python -m benchmarks.lstm_phases [--rounds 3] [--dtype float32] [--threads 2] [--markdown]

``kernels.lstm.lstm_forward`` runs three phases in one call:

1. **pack**: one launch packs the input projection's operands, packs
   W[:, :, :H]^T for the recurrence and copies x into the rows [h, x];
2. **projection**: ``z = b + W[:, :, H:] . x_t`` for every (t, n): one product
   (T N, I) x (I, 4H) over its tasks;
3. **recurrence**: row blocks of sequences in parallel (``products.recurrence_plan``), time serial inside a
   block; per step the block's h_{t-1} is packed (``rec pack``), one row of
   register tiles adds ``h_{t-1} W[:, :, :H]^T`` to z (``rec product``), and the
   gate epilogue (sigma_f, sigma_i, sigma_o, sigma_n, c_t, h_t) runs per
   sequence (``epilogue``).

The kernel is timed whole (arrays allocated once, called directly: no Python
layer), then each phase alone with the same helpers and plans:

* pack + projection: ``products.matmul`` on the same operands (it packs and
  runs the same tasks; the recurrence's W packing and the x copy are not in it);
* rec pack: the recurrence's loop over blocks and steps with only the packing
  of h_{t-1};
* rec product: the same loop with the packing and the product;
* epilogue: what is left, whole forward - projection - rec product.

The backward (``kernels.lstm.lstm_backward``) the same way:

* bwd: the whole kernel;
* bwd dx+dW: the two products after the recurrence, dx = dz W[:, :, H:] and
  dW += dz^T [h, x], as two ``products.matmul`` calls (each packs its operands);
* bwd rec product: the recurrence's loop over blocks and steps with only
  dL/dh_{t-1} = dz_t W[:, :, :H] (packing dz_t and the row of tiles);
* bwd cell: the same loop with only the gates' dL/dz and the carried dL/dc
  (``cell_backward``);
* bwd rest: bwd - the three above (W's packing, the carries' set-up and copies,
  db, the launches).

Each figure is the median over ``--rounds`` interleaved rounds of each round's
median call (phases interleaved inside a round), at ``--threads`` threads and at
1 thread (the parallel speed-up of each phase shows the load balance of the
blocks: N = 16 sequences made 3 blocks of 6, 6 and 4 rows for 2 threads before the tall tile).
"""


import numpy as np
from numba import prange

import fastgrad.functional as F
from fastgrad import _checks, _jit
from fastgrad._jit import F1
from fastgrad.kernels import lstm as klstm
from fastgrad.kernels import products
from fastgrad.kernels.products import (
    ACCUMULATE,
    OVERWRITE,
    Operand,
    Packed,
    pack_row_block,
    recurrence_block,
    recurrence_block_count,
    recurrence_panel,
    row_block_product,
)

from .phases import interleaved, parse_args, render

#: (T, N, I, H): the benchmark runner's S, M, L and the char-LM example's sizes.
SHAPES = {
    "S": (50, 32, 32, 64),
    "M": (100, 16, 128, 128),
    "L": (35, 20, 256, 256),
    "char-LM": (64, 32, 32, 128),
}


@_jit.kernel
def recurrence_only(z2f: F1, hx2f: F1, rec_a: F1, rec_b: F1, plan_rec: products.GemmPlan, T: int, with_product: bool):
    """The forward's recurrence loop without the gate epilogue: per row block of
    sequences and step, pack h_{t-1} and (``with_product``) add h_{t-1} W_h^T to z."""
    N = plan_rec.m
    H = plan_rec.k
    G = plan_rec.n
    HI = hx2f.shape[0] // (T * N)
    a_h = Operand(hx2f, HI, 1)
    for q in prange(recurrence_block_count(plan_rec)):
        blk = np.int64(q)
        n0, nb = recurrence_block(blk, plan_rec)
        panel = Packed(recurrence_panel(rec_a, blk, H), rec_b)
        for t in range(T):
            r0 = t * N + n0
            if with_product:
                row_block_product(a_h, r0, nb, panel, plan_rec, z2f[r0 * G:], G, ACCUMULATE)
            else:
                pack_row_block(a_h, r0, nb, panel.ap, plan_rec)


@_jit.kernel
def bwd_recurrence_only(dz2f: F1, rec_a: F1, rec_b: F1, rec_tmp: F1, plan_rec: products.GemmPlan, T: int):
    """The backward recurrence's products alone: dL/dh_{t-1} = dz_t W[:, :, :H] per block and step."""
    N = plan_rec.m
    H = plan_rec.n
    G = plan_rec.k
    a_dz = Operand(dz2f, G, 1)
    for q in prange(recurrence_block_count(plan_rec)):
        blk = np.int64(q)
        n0, nb = recurrence_block(blk, plan_rec)
        panel = Packed(recurrence_panel(rec_a, blk, G), rec_b)
        tmp = recurrence_panel(rec_tmp, blk, H)
        for t in range(T - 1, -1, -1):
            row_block_product(a_dz, t * N + n0, nb, panel, plan_rec, tmp, H, OVERWRITE)


@_jit.kernel
def bwd_cells_only(grads: klstm.LSTMGrads, scratch: klstm.LSTMScratch, upstream: klstm.LSTMUpstream, saved: klstm.LSTMSaved,
                   codes: _jit.I1, plan_rec: products.GemmPlan):
    """The backward recurrence's gate step alone: cell_backward per row block of sequences and step."""
    T, N, H = saved.sh.shape
    rec_tmp = scratch.rec_tmp
    for q in prange(recurrence_block_count(plan_rec)):
        blk = np.int64(q)
        n0, nb = recurrence_block(blk, plan_rec)
        tmp = recurrence_panel(rec_tmp, blk, H)
        for t in range(T - 1, -1, -1):
            for n in range(n0, n0 + nb):
                klstm.cell_backward(grads, scratch, upstream, saved, t, n, codes, tmp[(n - n0) * H:(n - n0 + 1) * H])


def phase_calls(shape, dtype):
    """The callables of one shape: whole forward, projection, rec pack, rec product, and the layer call."""
    T, N, n_in, H = shape
    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, n_in)).astype(dt)
    W = (0.1 * rng.standard_normal((4, H, H + n_in))).astype(dt)
    b = (0.1 * rng.standard_normal((4, H))).astype(dt)
    h0 = np.zeros((N, H), dt)
    c0 = np.zeros((N, H), dt)
    lengths = np.full(N, T, np.int64)
    codes = np.array([_checks.activation_code(a, "bench") for a in ("sigmoid", "sigmoid", "sigmoid", "tanh", "tanh")], np.int64)
    out = klstm.LSTMOut(np.empty((T, N, H), dt), np.empty((N, H), dt), np.empty((N, H), dt))
    saved = klstm.LSTMSaved(np.empty((T, N, H + n_in), dt), np.empty((T, N, 4, H), dt), np.empty((T, N, 4, H), dt),
                            np.empty((T + 1, N, H), dt), np.empty((T, N, H), dt))
    plan_proj = products.gemm_plan(T * N, 4 * H, n_in, dt)
    plan_rec = products.recurrence_plan(N, 4 * H, H, dt)
    pa, pb = products.packed_sizes(plan_proj, dt)
    buffers = klstm.LSTMBuffers(np.empty(pa, dt), np.empty(pb, dt), np.zeros(products.recurrence_panels_size(plan_rec, H), dt),
                                np.empty(products.packed_b_size(plan_rec, dt), dt))
    inputs = klstm.LSTMInputs(x, h0, c0, lengths, codes)
    work = T * N * 4 * H * (H + n_in)
    forward = _jit.pick(klstm.lstm_forward, work)

    def whole():
        forward(out, saved, inputs, W, b, buffers, plan_proj, plan_rec)

    z2f = saved.z.reshape(-1)
    a_x = Operand(x.reshape(-1), n_in, 1)
    b_x = Operand(W.reshape(-1)[H:], 1, H + n_in)
    proj_packed = Packed(buffers.a, buffers.b)
    matmul = _jit.pick(products.matmul, T * N * 4 * H * n_in)

    def projection():
        matmul(z2f, 4 * H, a_x, b_x, b.reshape(-1), products.OVERWRITE, proj_packed, plan_proj)

    whole()  # fills hx and the packed W_h^T with real values for the recurrence-only loops
    hx2f = saved.hx.reshape(-1)
    rec = _jit.pick(recurrence_only, work)

    def rec_pack():
        rec(z2f, hx2f, buffers.rec_a, buffers.rec_b, plan_rec, T, False)

    def rec_product():
        rec(z2f, hx2f, buffers.rec_a, buffers.rec_b, plan_rec, T, True)

    def layer():
        F.lstm_forward(x, W, b)

    # the backward, on the saved state of the forward above
    TN = T * N
    G = 4 * H
    grads = klstm.LSTMGrads(np.zeros((T, N, n_in), dt), np.zeros_like(W), np.zeros_like(b), np.zeros((N, H), dt),
                            np.zeros((N, H), dt))
    upstream = klstm.LSTMUpstream(np.ones((T, N, H), dt), np.zeros((N, H), dt), np.zeros((N, H), dt))
    plan_brec = products.recurrence_plan(N, H, G, dt)
    plan_dx = products.gemm_plan(TN, n_in, G, dt)
    plan_dw = products.gemm_plan(G, H + n_in, TN, dt)
    sizes = [*products.packed_sizes(plan_dx, dt), *products.packed_sizes(plan_dw, dt)]
    scr = klstm.LSTMScratch(np.zeros((T, N, 4, H), dt), np.zeros((N, H), dt), np.zeros((N, H), dt), np.zeros((N, G), dt),
                            *(np.zeros(size, dt) for size in sizes),
                            np.zeros(products.recurrence_panels_size(plan_brec, G), dt),
                            np.zeros(products.packed_b_size(plan_brec, dt), dt),
                            np.zeros(products.recurrence_panels_size(plan_brec, H), dt))
    backward = _jit.pick(klstm.lstm_backward, 2 * work)

    def bwd():
        backward(grads, scr, upstream, saved, W, lengths, codes, plan_brec, plan_dx, plan_dw)

    bwd()  # fills dz and the packed W_h with real values
    dz2f = scr.dz.reshape(-1)
    W2f = W.reshape(-1)
    none = dz2f[:0]
    dx_packed = Packed(scr.dx_a, scr.dx_b)
    dw_packed = Packed(scr.dw_a, scr.dw_b)
    matmul_dx = _jit.pick(products.matmul, TN * G * n_in)
    matmul_dw = _jit.pick(products.matmul, TN * G * (H + n_in))

    def bwd_products():
        matmul_dx(grads.dx.reshape(-1), n_in, Operand(dz2f, G, 1), Operand(W2f[H:], H + n_in, 1), none, products.ACCUMULATE,
                  dx_packed, plan_dx)
        matmul_dw(grads.dW.reshape(-1), H + n_in, Operand(dz2f, 1, G), Operand(hx2f, H + n_in, 1), none, products.ACCUMULATE,
                  dw_packed, plan_dw)

    brec = _jit.pick(bwd_recurrence_only, work)
    cells = _jit.pick(bwd_cells_only, work)

    def bwd_rec():
        brec(dz2f, scr.rec_a, scr.rec_b, scr.rec_tmp, plan_brec, T)

    def bwd_cells():
        cells(grads, scr, upstream, saved, codes, plan_brec)

    return {"whole": whole, "projection": projection, "rec pack": rec_pack, "rec product": rec_product, "layer call": layer,
            "bwd": bwd, "bwd dx+dW": bwd_products, "bwd rec product": bwd_rec, "bwd cell": bwd_cells}


def measure(shapes, dtype, threads, rounds):
    """{(shape name, threads): {phase: median seconds}} over interleaved rounds."""
    return interleaved({name: phase_calls(SHAPES[name], dtype) for name in shapes}, threads, rounds)


def table(result, shapes, threads, markdown):
    rows = []
    head = ["shape (T, N, I, H)", "threads", "layer call", "kernel", "projection", "rec pack", "rec product", "epilogue",
            "rec GFLOP/s", "bwd", "bwd dx+dW", "bwd rec product", "bwd cell", "bwd rest"]
    for name in shapes:
        T, N, n_in, H = SHAPES[name]
        for nt in sorted({threads, 1}, reverse=True):
            p = result[(name, nt)]
            epilogue = p["whole"] - p["projection"] - p["rec product"]
            rec_flop = 2.0 * T * N * 4 * H * H
            rows.append([f"{name} {T}x{N}x{n_in}x{H}", str(nt), *(f"{1e3 * p[k]:.3f}" for k in ("layer call", "whole", "projection")),
                         f"{1e3 * p['rec pack']:.3f}", f"{1e3 * p['rec product']:.3f}", f"{1e3 * epilogue:.3f}",
                         f"{rec_flop / p['rec product'] / 1e9:.1f}",
                         *(f"{1e3 * p[k]:.3f}" for k in ("bwd", "bwd dx+dW", "bwd rec product", "bwd cell")),
                         f"{1e3 * (p['bwd'] - p['bwd dx+dW'] - p['bwd rec product'] - p['bwd cell']):.3f}"])
    return render(head, rows, markdown)


def main(argv=None):
    args = parse_args("python -m benchmarks.lstm_phases", __doc__.split("\n")[0], SHAPES, argv)
    shapes = args.shapes
    result = measure(shapes, args.dtype, args.threads, args.rounds)
    info = _jit.cpu_info()
    print(f"lstm forward phases, {args.dtype}, ms (median of {args.rounds} interleaved rounds); "
          f"cpu {info['model']} ({info['llvm_cpu']}), register tile {products.tile_shape(args.dtype)}")
    print(table(result, shapes, args.threads, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
