"""Run under ``mpiexec -n 2``: rank 1 raises an uncaught exception while rank 0 waits in a collective.

Without the excepthook installed by ``distributed.init()`` rank 0 would block in
Barrier forever; with it, rank 1 calls MPI_Abort and mpiexec ends both ranks.
"""

import time

from fastgrad import distributed as dist

dist.init()
if dist.rank() == 1:
    time.sleep(0.2)
    raise ValueError("deliberate failure on rank 1")
dist.barrier()
print("rank 0 passed the barrier (should not happen)", flush=True)
