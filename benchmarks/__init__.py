"""fastgrad benchmark suite: fastgrad vs a vectorised NumPy peer vs PyTorch CPU.

Run ``python -m benchmarks`` (or ``python -m fastgrad bench``); ``--quick`` for a
short sanity run, ``--help`` for the options.  Every library is timed in its own
subprocess (:mod:`benchmarks.worker`) with the same thread count; the parent
(:mod:`benchmarks.__main__`) merges their JSON and writes
``benchmarks/results/latest.{json,md,png}`` (:mod:`benchmarks.report`).

Modules:

* :mod:`benchmarks.cases`         the shape tables, FLOP formulas, shared inputs and targets
* :mod:`benchmarks.peer_numpy`    vectorised NumPy (BLAS) implementations, also the reference
* :mod:`benchmarks.peer_fastgrad` fastgrad's functional API and layers
* :mod:`benchmarks.peer_torch`    PyTorch CPU with autograd (optional: ``pip install torch==2.13.0``)
* :mod:`benchmarks.worker`        one library's timing process, GEMM peak and compile-time probes
* :mod:`benchmarks.report`        JSON, Markdown table, PNG chart
* :mod:`benchmarks.update_readme` puts the Markdown table between the README's bench markers
"""
