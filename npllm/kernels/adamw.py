"""The fused AdamW parameter update, in place, with PyTorch's exact semantics.

    adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step) -> None

param, grad, m (first moment) and v (second moment) are C-contiguous arrays of one shape
and one float dtype; param, m and v are updated in place. `step` is the 1-based count of
updates including this one. Per element, as torch.optim.AdamW (foreach=False):

    p -= lr * weight_decay * p                  decoupled weight decay, first
    m += (1 - beta1) * (g - m)                  torch's lerp form of beta1*m + (1-beta1)*g
    v = beta2 * v + (1 - beta2) * g * g
    p -= (lr / (1 - beta1**step)) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

One call may cover many parameters at once if they live in one flat buffer (llm.c style).
"""

from __future__ import annotations

import math

import numpy as np

from npllm.errors import ShapeError
from npllm.kernels._jit import flat, jit, run

KERNELS = ("adamw_update",)


def _check(param, grad, m, v) -> None:
    for name, a in (("param", param), ("grad", grad), ("m", m), ("v", v)):
        if a.shape != param.shape or a.dtype != param.dtype:
            raise ShapeError(
                f"adamw_update: {name} has shape {a.shape} and dtype {a.dtype}, but param has "
                f"{param.shape} and {param.dtype}; give all four the same shape and dtype"
            )
    for name, a in (("param", param), ("m", m), ("v", v)):
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ShapeError(
                f"adamw_update updates {name} in place, so it must be a writeable "
                "C-contiguous array; allocate it with np.zeros/np.ascontiguousarray"
            )


def _factors(lr, beta1, beta2, step):
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    return lr / bc1, math.sqrt(bc2)


# ---- NumPy reference -------------------------------------------------------------------
def adamw_update_numpy(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    _check(param, grad, m, v)
    t = param.dtype.type
    step_size, bc2_sqrt = _factors(lr, beta1, beta2, step)
    param *= t(1.0 - lr * weight_decay)
    m += t(1.0 - beta1) * (grad - m)
    v *= t(beta2)
    v += t(1.0 - beta2) * grad * grad
    param -= t(step_size) * m / (np.sqrt(v) / t(bc2_sqrt) + t(eps))


# ---- Numba -----------------------------------------------------------------------------
# A serial loop over elements lo..hi (slices walked from index 0: what vectorises), run by
# `_jit.run` (chunks in parallel for large buffers).
@jit
def _adamw(p, g, m, v, decay, b1c, b2, b2c, step_size, bc2_sqrt, eps, lo, hi):
    # the module docstring's four lines, fused: decay, m, v, then the bias-corrected step
    p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    for i in range(p.size):
        gi = g[i]
        mi = m[i] + b1c * (gi - m[i])
        vi = b2 * v[i] + b2c * gi * gi
        p[i] = p[i] * decay - step_size * mi / (np.sqrt(vi) / bc2_sqrt + eps)
        m[i] = mi
        v[i] = vi


def adamw_update_numba(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    _check(param, grad, m, v)
    t = param.dtype.type
    step_size, bc2_sqrt = _factors(lr, beta1, beta2, step)
    args = (
        param.reshape(-1),
        flat(grad),
        m.reshape(-1),
        v.reshape(-1),
        t(1.0 - lr * weight_decay),
        t(1.0 - beta1),
        t(beta2),
        t(1.0 - beta2),
        t(step_size),
        t(bc2_sqrt),
        t(eps),
    )
    run(_adamw, args, param.size)
