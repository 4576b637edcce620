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

    adamw_update_many(spans, grad, m, v, lr, beta1, beta2, eps, weight_decay, step) -> None

is the same update for many parameters in one call, the multi-tensor form (PyTorch's
`foreach`): `spans` (a `Spans`) lists the parameter arrays, which stay where they are, and
grad, m and v are flat 1-D buffers holding theirs end to end in that order. Gradient
clipping's two passes over such a flat gradient buffer are here too:

    sum_squares(x) -> float        the sum of x*x over a 1-D array, accumulated in float64
    scale_in_place(x, s) -> None   x *= s
"""

from __future__ import annotations

import math

import numpy as np
from numba import carray

from npllm.errors import ShapeError
from npllm.kernels._jit import address_as, chunk_of, flat, jit, per_chunk, run, wide_vectors

KERNELS = ("adamw_update", "adamw_update_many", "sum_squares", "scale_in_place")


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
    arrays = (param.reshape(-1), flat(grad), m.reshape(-1), v.reshape(-1))
    scalars = _scalars(param.dtype, lr, beta1, beta2, eps, weight_decay, step)
    run(_adamw, (*arrays, *scalars), param.size)


def _scalars(dtype, lr, beta1, beta2, eps, weight_decay, step) -> tuple:
    """`_adamw`'s scalar arguments, in the parameters' dtype."""
    t = dtype.type
    step_size, bc2_sqrt = _factors(lr, beta1, beta2, step)
    decay = 1.0 - lr * weight_decay
    return tuple(t(x) for x in (decay, 1.0 - beta1, beta2, 1.0 - beta2, step_size, bc2_sqrt, eps))


# ---- many parameters in one call -------------------------------------------------------
class Spans:
    """Parameter arrays laid end to end, for `adamw_update_many`: each one's offset in the
    flat gradient and moment buffers (`starts`), and its address, taken once here, through
    which the Numba kernel updates it where it lives (reading 4 addresses a parameter at
    every step through `ndarray.ctypes` would cost more than the calls it saves). Keeps
    the arrays alive; `holds` tells whether a list of arrays is still exactly these."""

    def __init__(self, arrays) -> None:
        self.arrays = tuple(arrays)
        dtypes = {a.dtype for a in self.arrays}
        if len(dtypes) > 1 or not all(np.issubdtype(d, np.floating) for d in dtypes):
            raise ShapeError(
                f"Spans: the parameters have dtypes {sorted(map(str, dtypes))}; give them "
                "one floating-point dtype"
            )
        for a in self.arrays:
            if not a.flags.c_contiguous or not a.flags.writeable:
                raise ShapeError(
                    "Spans: every parameter is updated in place, so each must be a writeable "
                    "C-contiguous array"
                )
        self.dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        self.starts = np.zeros(len(self.arrays) + 1, np.int64)
        np.cumsum([a.size for a in self.arrays], out=self.starts[1:])
        self.size = int(self.starts[-1])
        self.addresses = np.array([a.ctypes.data for a in self.arrays], np.int64)

    def holds(self, arrays) -> bool:
        return len(arrays) == len(self.arrays) and all(a is b for a, b in zip(arrays, self.arrays))


def _check_many(spans, grad, m, v) -> None:
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        if a.shape != (spans.size,) or a.dtype != spans.dtype or not a.flags.c_contiguous:
            raise ShapeError(
                f"adamw_update_many: {name} has shape {a.shape} and dtype {a.dtype}; it must "
                f"be a C-contiguous ({spans.size},) {spans.dtype} buffer, the parameters' "
                "values end to end"
            )
    if not (m.flags.writeable and v.flags.writeable):
        raise ShapeError("adamw_update_many updates m and v in place; pass writeable buffers")


def adamw_update_many_numpy(spans, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    _check_many(spans, grad, m, v)
    for k, p in enumerate(spans.arrays):
        s, e = spans.starts[k], spans.starts[k + 1]
        parts = (a[s:e].reshape(p.shape) for a in (grad, m, v))
        adamw_update_numpy(p, *parts, lr, beta1, beta2, eps, weight_decay, step)


@jit
def _adamw_many(addresses, starts, g, m, v, decay, b1c, b2, b2c, step_size, bc2_sqrt, eps, lo, hi):
    # elements lo..hi of the flat buffers, parameter by parameter: `_adamw` on each piece
    k = np.searchsorted(starts, lo, side="right") - 1
    while lo < hi:
        s, e = starts[k], starts[k + 1]
        end = min(hi, e)
        if end > lo:
            p = carray(address_as(addresses[k], g), e - s)
            _adamw(
                p[lo - s : end - s], g[lo:end], m[lo:end], v[lo:end],
                decay, b1c, b2, b2c, step_size, bc2_sqrt, eps, 0, end - lo,
            )  # fmt: skip
        lo = max(lo, end)
        k += 1


def adamw_update_many_numba(spans, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    _check_many(spans, grad, m, v)
    scalars = _scalars(spans.dtype, lr, beta1, beta2, eps, weight_decay, step)
    run(_adamw_many, (spans.addresses, spans.starts, grad, m, v, *scalars), spans.size)


# ---- clipping's two passes -------------------------------------------------------------
def sum_squares_numpy(x) -> float:
    x64 = np.asarray(x, np.float64).reshape(-1)
    return float(np.dot(x64, x64))


@jit
def _sum_squares(x, parts, lo, hi):
    wide_vectors()
    acc = 0.0
    for i in range(lo, hi):
        xi = np.float64(x[i])
        acc += xi * xi
    parts[chunk_of(lo, x.size, parts.shape[0])] = acc


def sum_squares_numba(x) -> float:
    """Partial sums over run's fixed chunks (their number does not depend on the threads),
    added in chunk order: the same bits on any number of threads."""
    x = flat(x)
    parts = per_chunk(x.size, x.size, 1, np.float64).reshape(-1)
    run(_sum_squares, (x, parts), x.size)
    return float(parts.sum())


def scale_in_place_numpy(x, s) -> None:
    x *= x.dtype.type(s)


@jit
def _scale(x, s, lo, hi):
    x = x[lo:hi]
    for i in range(x.size):
        x[i] *= s


def scale_in_place_numba(x, s) -> None:
    if not x.flags.c_contiguous:
        scale_in_place_numpy(x, s)
        return
    run(_scale, (x.reshape(-1), x.dtype.type(s)), x.size)
