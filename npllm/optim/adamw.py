"""`AdamW` with PyTorch's exact semantics (torch.optim.AdamW, the default for-loop path):
decoupled weight decay, bias-corrected moments, per-parameter step counts. The update of
each parameter is one call of the fused `kernels.adamw_update` (Numba, or its NumPy
reference), whose docstring spells out the arithmetic."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from npllm import kernels
from npllm.errors import ConfigError
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

    def step(self) -> None:
        """Update every parameter that has a gradient; the others are left untouched."""
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
