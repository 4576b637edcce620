"""`AdamW` with PyTorch's exact semantics (torch.optim.AdamW, the default for-loop path):
decoupled weight decay, bias-corrected moments, per-parameter step counts. The update is
the fused kernel of npllm/kernels/adamw.py (Numba, or its NumPy reference), whose
docstring spells out the arithmetic: one call a parameter group over flat buffers when it
can (`_OneCall`), else one call a parameter. Both give the same bits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from npllm import kernels
from npllm.errors import ConfigError
from npllm.kernels.adamw import Spans
from npllm.optim.flat import FlatGrads
from npllm.optim.optimizer import Optimizer


class AdamW(Optimizer):
    """AdamW over Tensors or param groups (dicts with "params" and any of lr, betas, eps,
    weight_decay). State per parameter: "step", "exp_avg", "exp_avg_sq"."""

    state_keys = ("step", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        )
        for g in self.param_groups:
            b1, b2 = g["betas"]
            if g["lr"] < 0 or g["eps"] < 0 or g["weight_decay"] < 0:
                raise ConfigError(
                    f"AdamW needs lr, eps and weight_decay >= 0, got lr={g['lr']}, "
                    f"eps={g['eps']}, weight_decay={g['weight_decay']}"
                )
            if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
                raise ConfigError(f"AdamW betas must be in [0, 1), got {g['betas']}")

        self._one_call: _OneCall | None = None

    def step(self) -> None:
        """Update every parameter that has a gradient; the others are left untouched."""
        if self._step_one_call():
            return
        for g in self.param_groups:
            beta1, beta2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                s = self.state.get(id(p))
                if s is None:
                    s = self.state[id(p)] = {
                        "step": 0,
                        "exp_avg": np.zeros_like(p.data),
                        "exp_avg_sq": np.zeros_like(p.data),
                    }
                s["step"] += 1
                kernels.adamw_update(
                    p.data,
                    p.grad,
                    s["exp_avg"],
                    s["exp_avg_sq"],
                    g["lr"],
                    beta1,
                    beta2,
                    g["eps"],
                    g["weight_decay"],
                    s["step"],
                )

    def _step_one_call(self) -> bool:
        """The update as one kernel call a group, if every parameter has a gradient and
        they share a step count and a dtype; False (nothing done) otherwise."""
        plan = self._one_call
        if plan is None or not plan.current(self):
            plan = self._one_call = _OneCall(self) if _OneCall.possible(self) else None
            if plan is None:
                return False
        if not plan.grads.gather():
            return False
        step = plan.entries[0]["step"] + 1
        for g, spans, (a, b) in zip(self.param_groups, plan.spans, plan.bounds):
            beta1, beta2 = g["betas"]
            kernels.adamw_update_many(
                spans,
                plan.grads.buffer[a:b],
                plan.exp_avg[a:b],
                plan.exp_avg_sq[a:b],
                g["lr"],
                beta1,
                beta2,
                g["eps"],
                g["weight_decay"],
                step,
            )
        for entry in plan.entries:
            entry["step"] = step
        return True


class _OneCall:
    """AdamW's state laid out for one kernel call a param group: every parameter's
    gradient and both moments in flat buffers, group after group (the gradients in a
    `FlatGrads`, so that the backward writes them there and clipping reads them in one
    call too). The per-parameter state entries stay, their arrays views of the moment
    buffers, so `state_dict` and the per-parameter path see the same numbers. The
    parameters stay where they are (`Spans` holds their addresses)."""

    def __init__(self, opt: AdamW) -> None:
        self.state = opt.state
        self.params = opt._params()
        self.spans = [Spans([p.data for p in g["params"]]) for g in opt.param_groups]
        ends = np.cumsum([0] + [s.size for s in self.spans])
        self.bounds = list(zip(ends[:-1], ends[1:]))
        dtype = self.params[0].dtype
        self.grads = FlatGrads(self.params, dtype)  # the layout the moments share
        self.exp_avg = np.zeros(self.grads.buffer.size, dtype)
        self.exp_avg_sq = np.zeros(self.grads.buffer.size, dtype)
        self.entries = []
        for p, a, b in zip(self.params, self.grads.starts, self.grads.starts[1:]):
            entry = opt.state.setdefault(id(p), {"step": 0})
            for name, buf in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                view = buf[a:b].reshape(p.shape)
                if name in entry:
                    view[...] = entry[name]
                entry[name] = view
            self.entries.append(entry)

    @staticmethod
    def possible(opt: AdamW) -> bool:
        """Every parameter has a gradient, and all are of one float dtype, C-contiguous
        and writeable, and at the same step count (none has state, or all the same)."""
        params = opt._params()
        if not params or not np.issubdtype(params[0].dtype, np.floating):
            return False
        for p in params:
            d = p.data
            if p.grad is None or d.dtype != params[0].dtype:
                return False
            if not (d.flags.c_contiguous and d.flags.writeable):
                return False
        return len({opt.state.get(id(p), {"step": 0})["step"] for p in params}) == 1

    def current(self, opt: AdamW) -> bool:
        """Whether the plan still describes the optimizer: the same state, parameters and
        parameter arrays, and one step count (a per-parameter step may have skipped some)."""
        params = opt._params()
        if opt.state is not self.state or len(params) != len(self.params):
            return False
        if any(p is not q for p, q in zip(params, self.params)):
            return False
        if not all(
            s.holds([p.data for p in g["params"]]) for g, s in zip(opt.param_groups, self.spans)
        ):
            return False
        return len({e["step"] for e in self.entries}) == 1
