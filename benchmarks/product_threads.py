"""The product core's thread decomposition: each launch at 1 and at 2 threads.

``python -m benchmarks.product_threads [--rounds 3] [--dtype float32] [--markdown]``

A product ``products.matmul`` is two parallel launches (the module docstring of
``fastgrad.kernels.products`` shows the loop nest):

1. **pack**: every (KC block, A or B micro-panel) copied into the packed
   buffers, parallel over those items; the packed B is written once here and
   read by every task of launch 2, from whichever thread's cache it landed in;
2. **tasks**: the (MC x NC) blocks of C over all of p, parallel over blocks.

This times each launch alone and the whole product at the dense benchmark's
forward shapes (z = x W^T: m = N, n = out, k = in) and two shapes nobody tuned
to, with the parallel twin at 1 and at 2 threads, so the table shows what the
second thread buys in each launch and what the separate packing launch costs
(its share of the product, and the same work done serially before the tasks).
Medians of ``--rounds`` interleaved rounds, each the median of repeated calls.
"""


import numpy as np
from numba import prange

from fastgrad import _jit
from fastgrad._jit import F1
from fastgrad.kernels import products
from fastgrad.kernels.products import Operand

from .phases import interleaved, parse_args, render

#: (N, in, out) of dense_forward's product: the runner's S, M, L and two untuned shapes
SHAPES = {
    "S": (32, 128, 128),
    "M": (128, 512, 512),
    "L": (512, 1024, 1024),
    "untuned": (200, 300, 700),
    "tall": (2000, 64, 96),
}


@_jit.kernel
def pack_only(a: Operand, b: Operand, packed: products.Packed, plan: products.GemmPlan):
    """Launch 1 of products.matmul alone: the packing items."""
    for t in prange(products.pack_count(packed, plan)):
        products.pack_item(np.int64(t), a, b, packed, plan)


@_jit.kernel
def tasks_only(c: F1, ldc: int, bias: F1, packed: products.Packed, plan: products.GemmPlan):
    """Launch 2 of products.matmul alone: the tasks, on operands packed before."""
    for t in prange(products.task_count(plan)):
        products.gemm_task(np.int64(t), c, ldc, bias, products.OVERWRITE, packed, plan)


def calls(shape, dtype):
    """The three callables of one shape (all parallel twins): pack, tasks, whole product."""
    N, n_in, n_out = shape
    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, n_in)).astype(dt)
    W = rng.standard_normal((n_out, n_in)).astype(dt)
    b = rng.standard_normal(n_out).astype(dt)
    z = np.empty((N, n_out), dt)
    plan = products.gemm_plan(N, n_out, n_in, dt)
    packed = products.Packed(*(np.empty(size, dt) for size in products.packed_sizes(plan, dt)))
    a = Operand(x.reshape(-1), n_in, 1)
    wt = Operand(W.reshape(-1), 1, n_in)
    zf = z.reshape(-1)
    pack = pack_only.parallel
    tasks = tasks_only.parallel
    whole = products.matmul.parallel
    fns = {
        "pack": lambda: pack(a, wt, packed, plan),
        "tasks": lambda: tasks(zf, n_out, b, packed, plan),
        "whole": lambda: whole(zf, n_out, a, wt, b, products.OVERWRITE, packed, plan),
    }
    fns["whole"]()
    want = x.astype(np.float64) @ W.T.astype(np.float64) + b
    scale = np.abs(want).max()
    tol = 1e-4 if dt == np.float32 else 1e-10
    assert np.abs(z - want).max() <= tol * scale * np.sqrt(n_in), "products.matmul disagrees with NumPy"
    return fns, (products.pack_count(packed, plan), products.task_count(plan))


def measure(names, dtype, threads, rounds):
    """({(shape name, threads): {launch: median seconds}}, {shape name: (packing items, tasks)})."""
    made = {name: calls(SHAPES[name], dtype) for name in names}
    result = interleaved({name: made[name][0] for name in names}, threads, rounds)
    return result, {name: made[name][1] for name in names}


def table(result, counts, names, threads, markdown):
    head = ["shape (N, in, out)", "threads", "pack ms", "tasks ms", "whole ms", "pack share", "whole GFLOP/s",
            "x 1 thread: pack", "tasks", "whole", "pack items", "tasks"]
    rows = []
    for name in names:
        N, n_in, n_out = SHAPES[name]
        items, tasks = counts[name]
        flop = 2.0 * N * n_in * n_out
        one = result[(name, 1)]
        for nt in sorted({threads, 1}, reverse=True):
            p = result[(name, nt)]
            rows.append([f"{name} {N}x{n_in}x{n_out}", str(nt), *(f"{1e3 * p[k]:.3f}" for k in ("pack", "tasks", "whole")),
                         f"{100 * p['pack'] / p['whole']:.0f} %", f"{flop / p['whole'] / 1e9:.1f}",
                         *(f"{one[k] / p[k]:.2f}x" for k in ("pack", "tasks", "whole")),
                         str(items), str(tasks)])
    return render(head, rows, markdown)


def main(argv=None):
    args = parse_args("python -m benchmarks.product_threads", __doc__.split("\n")[0], SHAPES, argv)
    names = args.shapes
    result, counts = measure(names, args.dtype, args.threads, args.rounds)
    info = _jit.cpu_info()
    print(f"product core launches, {args.dtype}, parallel twins (median of {args.rounds} interleaved rounds); "
          f"cpu {info['model']} ({info['llvm_cpu']}), register tile {products.tile_shape(args.dtype)}, "
          f"KC/MC/NC {products.cache_blocks(args.dtype)}")
    print(table(result, counts, names, args.threads, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
