"""`SGD` with PyTorch's semantics (torch.optim.SGD without dampening or Nesterov):
weight decay added to the gradient, the momentum buffer starting as the first gradient."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from npllm.errors import ConfigError
from npllm.optim.optimizer import Optimizer


class SGD(Optimizer):
    """p -= lr * d, with d = g + weight_decay * p, or with momentum
    buf = momentum * buf + d (buf = d at the first step) and d = buf.
    State per parameter with momentum: "momentum_buffer"."""

    state_keys = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        for g in self.param_groups:
            if g["lr"] < 0 or g["momentum"] < 0 or g["weight_decay"] < 0:
                raise ConfigError(
                    f"SGD needs lr, momentum and weight_decay >= 0, got lr={g['lr']}, "
                    f"momentum={g['momentum']}, weight_decay={g['weight_decay']}"
                )

    def step(self) -> None:
        """Update every parameter that has a gradient; the others are left untouched."""
        for g in self.param_groups:
            lr, momentum, wd = g["lr"], g["momentum"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad + wd * p.data if wd else p.grad
                if momentum:
                    s = self.state.setdefault(id(p), {})
                    buf = s.get("momentum_buffer")
                    if buf is None:
                        s["momentum_buffer"] = buf = np.array(d, copy=True)
                    else:
                        buf *= momentum
                        buf += d
                    d = buf
                p.data -= lr * d
