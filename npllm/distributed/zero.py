"""`ZeroAdamW`: ZeRO stage 1, AdamW's moments sharded over the ranks (see
`npllm.distributed`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from npllm.distributed.grads import GradBuffer
from npllm.errors import ConfigError


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
