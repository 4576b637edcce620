"""Data-parallel training over MPI: the `World` of processes that train one model, the
flat buffer in which they sum their gradients, and how a global batch is split among them.

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

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from npllm.errors import ConfigError, NpllmError

# Set by the launchers for the processes they start: MPICH's and Intel MPI's hydra and
# SLURM's pmi2 plugin (PMI_*), PMIx (srun --mpi=pmix), Open MPI.
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")
BUCKET_BYTES = 4 << 20  # gradients per Iallreduce: 4 MiB (PyTorch DDP's buckets are 25)


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
            if not isinstance(e, (NpllmError, KeyboardInterrupt)):
                traceback.print_exc()
            what = str(e) or type(e).__name__
            print(
                f"npllm {command}: error: rank {self.rank} of {self.size} failed: {what}; "
                "stopping every rank",
                file=sys.stderr,
                flush=True,
            )
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


class GradBuffer:
    """One flat buffer that holds every parameter's gradient, summed over the ranks.

    `attach()` (before a step's first backward) zeroes the buffer and makes each `p.grad`
    a view of its slice: the autograd engine adds into an existing `.grad` in place, so
    the backward writes the gradients straight into the buffer, with no copy. `allreduce`
    then sums it over the ranks in buckets of about `bucket_bytes`, one non-blocking
    `Iallreduce` each, all in flight together. The layout is the parameters in reverse
    order, the order in which backward finishes them, so that a bucket could be started as
    soon as its gradients are complete; npllm's engine has no per-parameter hook yet, and
    on one core per rank the backward leaves no core free to overlap with anyway.
    `extras` float32 slots at the end carry the step's scalars (the loss, the Ctrl-C flag)
    in the same message: communication per step is this one buffer.

    In a one-process world it does nothing: `.grad` stays as the engine makes it."""

    def __init__(
        self,
        params: Sequence[Any],
        world: World,
        extras: int = 2,
        bucket_bytes: int = BUCKET_BYTES,
    ) -> None:
        self.world, self.params, self.extras = world, list(params), extras
        self.active = world.size > 1
        dtypes = {p.data.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ConfigError(f"data-parallel training needs one parameter dtype, got {dtypes}")
        dtype = dtypes.pop()
        self.numel = sum(p.data.size for p in self.params)
        self.nbytes = (self.numel + extras) * dtype.itemsize
        if not self.active:
            return
        self.flat = np.zeros(self.numel + extras, dtype)
        self.views, self.buckets = [], []
        offset, start = 0, 0
        for p in reversed(self.params):
            self.views.append((p, self.flat[offset : offset + p.data.size].reshape(p.shape)))
            offset += p.data.size
            if (offset - start) * dtype.itemsize >= bucket_bytes:
                self.buckets.append(self.flat[start:offset])
                start = offset
        self.buckets.append(self.flat[start:])  # the rest, with the extras
        self.tail = self.flat[self.numel :]

    def attach(self) -> None:
        """Zero the buffer and point every parameter's `.grad` at its slice."""
        if not self.active:
            return
        self.flat.fill(0)
        for p, view in self.views:
            p.grad = view

    def allreduce(self, *scalars: float) -> tuple[float, ...]:
        """Sum the gradients and `scalars` (at most `extras` of them) over the ranks;
        returns the summed scalars. One process: returns `scalars` as they are."""
        if not self.active:
            return tuple(float(s) for s in scalars)
        for p, view in self.views:
            if p.grad is not view:  # the engine replaced it: keep what it computed
                view[...] = 0 if p.grad is None else p.grad
                p.grad = view
        self.tail.fill(0)
        self.tail[: len(scalars)] = scalars
        mpi = self.world._mpi
        requests = [self.world.comm.Iallreduce(mpi.IN_PLACE, b, op=mpi.SUM) for b in self.buckets]
        mpi.Request.Waitall(requests)
        return tuple(float(v) for v in self.tail[: len(scalars)])


class ZeroAdamW:
    """ZeRO stage 1 over an `AdamW`: each rank keeps the moments (exp_avg, exp_avg_sq) of
    its 1/N of the flat parameter vector only, updates those parameters, and the updated
    parameters are all-gathered (`Allgatherv`) so that every rank holds the whole model
    again. The gradients are still summed whole (`GradBuffer`), so clipping is unchanged.
    Memory: 8 bytes a parameter of AdamW state become 8/N per rank; communication: one
    parameter-sized all-gather a step on top of the allreduce.

    Its `state_dict()` is AdamW's, whole (the shards are gathered on rank 0: every rank
    must call it), and `load_state_dict` takes a whole one, so checkpoints do not depend on
    N or on ZeRO: a run resumes with or without it, on any number of ranks."""

    def __init__(self, optimizer: Any, grads: GradBuffer) -> None:
        self.inner, self.world, self.grads = optimizer, grads.world, grads
        self.param_groups = optimizer.param_groups  # the loop sets each group's lr
        world, n = self.world, grads.numel
        bounds = [r * n // world.size for r in range(world.size + 1)]
        self.lo, self.hi = bounds[world.rank], bounds[world.rank + 1]
        self.counts = [bounds[r + 1] - bounds[r] for r in range(world.size)]
        self.displs = bounds[:-1]
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        # (param, its group, first and last flat index of it in this shard, shard offset)
        self.pieces, self.layout, offset = [], [], 0
        for p, _ in grads.views:
            a, b = max(offset, self.lo), min(offset + p.data.size, self.hi)
            if a < b:
                self.pieces.append((p, group_of[id(p)], a - offset, b - offset, a - self.lo))
            self.layout.append((p, offset))
            offset += p.data.size
        dtype = grads.flat.dtype
        self.exp_avg = np.zeros(self.hi - self.lo, dtype)
        self.exp_avg_sq = np.zeros(self.hi - self.lo, dtype)
        self.flat = np.empty(n, dtype)
        self.steps = 0
        if optimizer.state:  # resumed: keep this rank's share of the whole state
            self.load_state_dict(optimizer.state_dict())

    @property
    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds."""
        return self.exp_avg.nbytes + self.exp_avg_sq.nbytes

    def zero_grad(self) -> None:
        self.inner.zero_grad()

    def step(self) -> None:
        from npllm import kernels

        self.steps += 1
        for p, g, a, b, s in self.pieces:
            beta1, beta2 = g["betas"]
            kernels.adamw_update(
                p.data.reshape(-1)[a:b],
                p.grad.reshape(-1)[a:b],
                self.exp_avg[s : s + b - a],
                self.exp_avg_sq[s : s + b - a],
                g["lr"],
                beta1,
                beta2,
                g["eps"],
                g["weight_decay"],
                self.steps,
            )
        for p, offset in self.layout:  # this rank's updated parameters into the flat vector
            a, b = max(offset, self.lo), min(offset + p.data.size, self.hi)
            if a < b:
                self.flat[a:b] = p.data.reshape(-1)[a - offset : b - offset]
        mpi = self.world._mpi
        self.world.comm.Allgatherv(mpi.IN_PLACE, [self.flat, (self.counts, self.displs)])
        for p, offset in self.layout:
            p.data.reshape(-1)[:] = self.flat[offset : offset + p.data.size]

    def state_dict(self) -> dict[str, Any]:
        """AdamW's whole state dict on rank 0 (the shards gathered there); every rank calls
        it, the others get theirs back with empty state."""
        whole = {}
        for name in ("exp_avg", "exp_avg_sq"):
            full = np.empty_like(self.flat) if self.world.is_main else None
            recv = [full, (self.counts, self.displs)] if self.world.is_main else None
            self.world.comm.Gatherv(getattr(self, name), recv, root=0)
            whole[name] = full
        self.inner.state = {}
        if self.world.is_main and self.steps:
            for p, offset in self.layout:
                self.inner.state[id(p)] = {
                    "step": self.steps,
                    **{k: v[offset : offset + p.data.size].reshape(p.shape).copy()
                       for k, v in whole.items()},
                }  # fmt: skip
        out = self.inner.state_dict()
        self.inner.state = {}
        return out

    def load_state_dict(self, state_dict: Any) -> None:
        """Take this rank's share of a whole AdamW state dict."""
        self.inner.load_state_dict(state_dict)
        steps = {s["step"] for s in self.inner.state.values()}
        if len(steps) > 1:
            raise ConfigError(
                "--zero1 needs one step count for every parameter; this optimizer state has "
                f"{sorted(steps)}: resume without --zero1"
            )
        self.steps = steps.pop() if steps else 0
        for p, _, a, b, s in self.pieces:
            st = self.inner.state.get(id(p))
            for name in ("exp_avg", "exp_avg_sq"):
                dest = getattr(self, name)[s : s + b - a]
                dest[...] = 0 if st is None else st[name].reshape(-1)[a:b]
        self.inner.state = {}
