"""`clip_grad_norm`: torch.nn.utils.clip_grad_norm_ for npllm Tensors."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from npllm.autograd.engine import Tensor


def clip_grad_norm(params: Iterable[Tensor] | Tensor, max_norm: float) -> float:
    """Scale all gradients in place so that their global L2 norm is at most `max_norm`;
    return the norm before clipping. As torch, the scale is max_norm / (norm + 1e-6),
    applied only when below 1. Parameters without a gradient are skipped."""
    params = [params] if isinstance(params, Tensor) else list(params)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    # one BLAS dot per array; the squares are summed across arrays in float64
    total = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for g in grads:
            g *= g.dtype.type(scale)
    return total
