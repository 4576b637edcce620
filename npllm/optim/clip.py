"""`clip_grad_norm`: torch.nn.utils.clip_grad_norm_ for npllm Tensors."""

from __future__ import annotations

import math
from collections.abc import Iterable

from npllm import kernels
from npllm.autograd.engine import Tensor
from npllm.optim.flat import buffer_of


def clip_grad_norm(params: Iterable[Tensor] | Tensor, max_norm: float) -> float:
    """Scale all gradients in place so that their global L2 norm is at most `max_norm`;
    return the norm before clipping. As torch, the scale is max_norm / (norm + 1e-6),
    applied only when below 1. Parameters without a gradient are skipped."""
    params = [params] if isinstance(params, Tensor) else list(params)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    # one kernel call over an optimizer's flat gradient buffer (flat.py) when the
    # gradients are exactly its slices, else one a gradient; squares summed in float64
    buffer = buffer_of(grads)
    arrays = [buffer] if buffer is not None else grads
    total = math.sqrt(sum(kernels.sum_squares(g) for g in arrays))
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for g in arrays:
            kernels.scale_in_place(g, scale)
    return total
