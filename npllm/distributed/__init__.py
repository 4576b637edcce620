"""Data-parallel training over MPI: the `World` of processes that train one model
(`world`: launch, collectives, batch split, threads, failure), the flat buffer in which
they sum their gradients (`grads`), ZeRO stage 1 over AdamW (`zero`), and how a global
batch is split among them.

`mpiexec -n N npllm train ...` (or `srun --mpi=pmi2 npllm train ...` under SLURM) starts
N copies of the same command; `init()` sees the launcher's environment and joins them
through mpi4py (the `mpi` extra). Without a launcher it never imports mpi4py and returns
a one-process `World` whose collectives do nothing, so training without MPI is unchanged.

One step, as nanoGPT's DDP but with MPI collectives (llm.c starts its processes the same way):
- every rank draws the whole global batch from the run's seeded stream (a few integers
  and a gather of B*T tokens) and keeps its contiguous share of the rows (`shard`), so
  N ranks see exactly the rows one process would;
- each rank scales its loss by its share of the batch's counted targets (`weight`), so the
  summed gradient is the gradient of the one-process loss (a mean over all the batch's
  targets), also for chat data whose masked targets are spread unevenly over the rows;
- the gradients are written straight into one flat float32 buffer (`GradBuffer`: each
  parameter's `.grad` is a view of it, as llm.c keeps its gradients) and summed with one
  non-blocking `Iallreduce` per bucket, the step's loss and Ctrl-C flag in the same
  message; every rank then clips and applies the same AdamW step to the same weights.

Threads: one process per core. When L ranks share a node, each runs Numba (and NumPy's
BLAS, through threadpoolctl) with cores // L threads (so 1 with one rank per core),
unless NUMBA_NUM_THREADS is set; `World.threads` says what was chosen.

Failure: an error in one rank ends every rank (`fail_together` calls MPI_Abort; a rank
that dies is noticed by the launcher), never a hang. Only rank 0 writes, and checkpoints
are written atomically, so the last one stays loadable.
"""

from npllm.distributed.grads import BUCKET_BYTES, GradBuffer
from npllm.distributed.world import LAUNCHER_VARIABLES, World, init, launched
from npllm.distributed.zero import ZeroAdamW

__all__ = [
    "BUCKET_BYTES",
    "LAUNCHER_VARIABLES",
    "GradBuffer",
    "World",
    "ZeroAdamW",
    "init",
    "launched",
]
