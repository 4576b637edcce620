"""`GradBuffer`: every parameter's gradient in one flat buffer, summed over the ranks in
buckets of non-blocking allreduces (see `npllm.distributed`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from npllm.errors import ConfigError

if TYPE_CHECKING:
    from npllm.distributed.world import World

BUCKET_BYTES = 4 << 20  # gradients per Iallreduce: 4 MiB (PyTorch DDP's buckets are 25)


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
