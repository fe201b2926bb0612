"""Worker process for :func:`fastgrad.warmup`: compiles kernels into the shared cache.

Protocol: one task per stdin line, ``name dtype twin``; one answer per task on
stdout, ``ok SECONDS`` or ``error MESSAGE``.  Ends at end of input.
"""

import sys


def main() -> int:
    from .config import compile_task

    for line in sys.stdin:
        name, dtype, twin = line.split()
        try:
            seconds = compile_task(name, dtype, twin)
        except Exception as exc:  # reported to the parent, which compiles this task itself
            print(f"error {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        else:
            print(f"ok {seconds:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
