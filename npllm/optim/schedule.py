"""Learning-rate schedules: `cosine_lr`, nanoGPT's `get_lr`."""

from __future__ import annotations

import math

from npllm.errors import ConfigError


def cosine_lr(it: int, lr: float, warmup_iters: int, decay_iters: int, min_lr: float) -> float:
    """Linear warmup over `warmup_iters` steps, then a cosine decay from `lr` to `min_lr`
    reached at `decay_iters`, and `min_lr` after that."""
    if decay_iters < warmup_iters:
        raise ConfigError(
            f"decay_iters ({decay_iters}) must not be smaller than warmup_iters ({warmup_iters})"
        )
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return min_lr + coeff * (lr - min_lr)
