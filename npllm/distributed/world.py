"""The `World` of MPI ranks training one model: how `init()` joins them from the
launcher's environment, their collectives, how a batch is split among them, their threads,
and how an error in one ends them all (see `npllm.distributed`)."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from npllm.distributed.grads import GradBuffer
from npllm.errors import ConfigError, NpllmError

# Set by the launchers for the processes they start: MPICH's and Intel MPI's hydra and
# SLURM's pmi2 plugin (PMI_*), PMIx (srun --mpi=pmix), Open MPI.
# Seconds a failing rank waits after writing its error before MPI_Abort (see fail_together).
ABORT_GRACE = 1.0

LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")


def launched() -> bool:
    """True when an MPI launcher (mpiexec, srun with PMI) started this process."""
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


def init() -> World:
    """The processes this one trains with: every process of the MPI job when an MPI
    launcher started it, else this process alone (mpi4py is then never imported)."""
    slurm_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if not launched():
        if slurm_tasks > 1:
            raise ConfigError(
                f"srun started {slurm_tasks} tasks without MPI, so each would train alone "
                "into the same run; pass --mpi=pmi2 (or --mpi=pmix) to srun"
            )
        return World()
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigError(
            "started by an MPI launcher, but mpi4py is not installed; install the mpi "
            "extra: pip install -e '.[mpi]'"
        ) from None
    world = World(MPI.COMM_WORLD, MPI)
    if world.size == 1 and slurm_tasks > 1:
        raise ConfigError(
            f"srun started {slurm_tasks} tasks but MPI sees one; pass --mpi=pmi2 "
            "(or --mpi=pmix) to srun"
        )
    world.threads = world._one_process_per_core()
    return world


class World:
    """`rank` and `size` of the processes training one model, and the few collectives
    training needs (sums, broadcast from rank 0); with no communicator, a world of one
    process whose collectives return their input."""

    def __init__(self, comm: Any = None, mpi: Any = None) -> None:
        self.comm, self._mpi = comm, mpi
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.threads: int | None = None  # Numba threads per rank, when init() set them

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes checkpoints."""
        return self.rank == 0

    def describe(self) -> str:
        threads = f", {self.threads} thread(s) each" if self.threads else ""
        return f"data-parallel over {self.size} MPI ranks{threads}"

    # ---- collectives -----------------------------------------------------------------------
    def allreduce(self, array: np.ndarray) -> np.ndarray:
        """Sum `array` over the ranks, in place; returns it."""
        if self.size > 1:
            self.comm.Allreduce(self._mpi.IN_PLACE, array, op=self._mpi.SUM)
        return array

    def broadcast(self, array: np.ndarray) -> np.ndarray:
        """Rank 0's `array` into every rank's, in place; returns it."""
        if self.size > 1:
            self.comm.Bcast(array, root=0)
        return array

    def check_same(self, what: str, value: Any) -> None:
        """Raise on every rank unless every rank holds the same `value` (e.g. the configs:
        ranks that disagree would train different models)."""
        if self.size == 1:
            return
        values = self.comm.allgather(value)
        if any(v != values[0] for v in values):
            differ = [r for r, v in enumerate(values) if v != values[0]]
            raise ConfigError(
                f"the MPI ranks do not agree on {what}: ranks {differ} differ from rank 0; "
                "start every rank with the same command, flags and files"
            )

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()

    def broadcast_parameters(self, params: Sequence[Any]) -> None:
        """Every rank starts from rank 0's weights (one flat message)."""
        if self.size == 1:
            return
        flat = np.concatenate([p.data.ravel() for p in params])
        self.broadcast(flat)
        offset = 0
        for p in params:
            p.data[...] = flat[offset : offset + p.data.size].reshape(p.shape)
            offset += p.data.size

    def mean_losses(
        self, losses: dict[str, list[float]], count: int, stopped: bool
    ) -> dict[str, float] | None:
        """{name: mean} over all ranks of the losses of which each rank holds its share
        (`count` per name in all), in one message; None when any rank `stopped`. One
        process: np.mean of each list, as training without MPI always computed it."""
        if self.size == 1:
            return None if stopped else {k: float(np.mean(v)) for k, v in losses.items()}
        sums = np.array([sum(v) for v in losses.values()] + [float(stopped)])
        self.allreduce(sums)
        if sums[-1] > 0:
            return None
        return {k: float(total) / count for k, total in zip(losses, sums)}

    # ---- the batch ---------------------------------------------------------------------------
    def rows(self, batch_size: int) -> slice:
        """This rank's contiguous share of a batch's rows; shares differ by one row at most."""
        return slice(self.rank * batch_size // self.size, (self.rank + 1) * batch_size // self.size)

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size < self.size:
            raise ConfigError(
                f"--batch-size {batch_size} is the global batch, split over {self.size} MPI "
                f"ranks: give each rank a row at least (--batch-size {self.size} or more)"
            )

    def shard(
        self, x: np.ndarray, y: np.ndarray, ignore_index: int = -1
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """(this rank's rows of x, of y, its weight): the share of the batch's counted
        targets (those not `ignore_index`) that its rows hold, so that the weighted sum of
        the ranks' mean losses is the mean loss of the whole batch. One process: (x, y, 1.0)."""
        if self.size == 1:
            return x, y, 1.0
        rows = self.rows(len(x))
        total = int(np.count_nonzero(y != ignore_index))
        if total == 0:  # nothing counted anywhere: every loss is 0, any weights sum right
            return x[rows], y[rows], (rows.stop - rows.start) / len(x)
        return x[rows], y[rows], int(np.count_nonzero(y[rows] != ignore_index)) / total

    def shard_dropout(self, rng: np.random.Generator) -> None:
        """Give rank r a dropout stream of its own: the saved (rank 0) stream jumped r
        times, so its masks are independent of the other ranks' and a resume with any
        number of ranks continues from the checkpoint's state."""
        if self.rank > 0:
            rng.bit_generator.state = rng.bit_generator.jumped(self.rank).state

    def grad_buffer(self, params: Sequence[Any], extras: int = 2) -> GradBuffer:
        """The flat gradient buffer for `params` (one process: a buffer that does nothing)."""
        return GradBuffer(params, self, extras=extras)

    # ---- failure -------------------------------------------------------------------------------
    @contextmanager
    def fail_together(
        self, command: str, agreed: tuple[type[BaseException], ...] = ()
    ) -> Iterator[None]:
        """Run a command's body so that an error in one rank stops the whole job. Errors
        in `agreed` are raised by every rank at the same point (they follow a collective,
        e.g. a reduced loss that diverged): rank 0 reports them and the others leave
        quietly with the same exit code. Any other error is reported with its rank and
        ends the job through MPI_Abort: the other ranks may be waiting in a collective that
        this one will never join. One process: errors pass through unchanged."""
        try:
            yield
        except agreed as e:
            if self.size > 1 and not self.is_main:
                raise SystemExit(_exit_code(e)) from None
            raise
        except BaseException as e:
            if self.size == 1 or isinstance(e, SystemExit):
                raise
            what = str(e) or type(e).__name__
            report = (
                f"npllm {command}: error: rank {self.rank} of {self.size} failed: {what}; "
                "stopping every rank\n"
            )
            if not isinstance(e, (NpllmError, KeyboardInterrupt)):
                report += "".join(traceback.format_exception(e))
            # One write, the one-line error first, then a moment for the launcher to pass
            # it on: MPI_Abort kills every process at once, and output still in the
            # launcher's pipes when it does is lost.
            sys.stdout.flush()
            sys.stderr.flush()
            data = report.encode(errors="replace")
            while data:
                data = data[os.write(sys.stderr.fileno(), data) :]
            time.sleep(ABORT_GRACE)
            self.comm.Abort(_exit_code(e))
            os._exit(_exit_code(e))  # MPI_Abort may return in the caller; never run on

    # ---- threads ------------------------------------------------------------------------------
    def _one_process_per_core(self) -> int | None:
        """Numba/BLAS threads = this node's cores // the ranks on it, unless the user set
        NUMBA_NUM_THREADS; returns the number chosen (None: left as it was)."""
        if self.size == 1 or "NUMBA_NUM_THREADS" in os.environ:
            return None
        local = self.comm.Split_type(self._mpi.COMM_TYPE_SHARED)
        ranks_here = local.Get_size()
        local.Free()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        import numba

        threads = max(1, min((cores or 1) // ranks_here, numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(threads)
        try:  # NumPy's own BLAS (npllm's matmuls run in Numba's pool, kernels/blas.py)
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads, user_api="blas")
        except ImportError:
            pass
        return threads


def _exit_code(e: BaseException) -> int:
    if isinstance(e, KeyboardInterrupt):
        return 130
    return 2 if isinstance(e, NpllmError) else 1
