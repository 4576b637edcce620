"""Inverted dropout, given the uniform draws (the RNG stays outside the kernel, so the
caller's numpy Generator is the only source of randomness).

    dropout_forward(x, u, p) -> (out, keep)     keep = u >= p, out = x * keep / (1 - p)
    dropout_backward(dy, keep, p) -> dx         dx = dy * keep / (1 - p)

`u` has x's shape, uniform in [0, 1); `keep` is a bool array, the only thing saved.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from npllm.kernels._jit import jit

KERNELS = ("dropout_forward", "dropout_backward")


# ---- NumPy reference -------------------------------------------------------------------
def dropout_forward_numpy(x, u, p):
    keep = u >= p
    return x * keep * x.dtype.type(1.0 / (1.0 - p)), keep


def dropout_backward_numpy(dy, keep, p):
    # out = x * keep / (1 - p)
    return dy * keep * dy.dtype.type(1.0 / (1.0 - p))


# ---- Numba -----------------------------------------------------------------------------
@jit(parallel=True)
def _dropout_fwd(x, u, p, scale, out, keep):
    t = x.dtype.type
    for i in prange(x.size):
        k = u[i] >= p
        keep[i] = k
        out[i] = x[i] * scale if k else t(0)


@jit(parallel=True)
def _dropout_bwd(dy, keep, scale, dx):
    t = dy.dtype.type
    for i in prange(dy.size):
        dx[i] = dy[i] * scale if keep[i] else t(0)


def dropout_forward_numba(x, u, p):
    xf = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(xf)
    keep = np.empty(xf.shape, dtype=np.bool_)
    _dropout_fwd(
        xf,
        np.ascontiguousarray(u).reshape(-1),
        u.dtype.type(p),
        x.dtype.type(1.0 / (1.0 - p)),
        out,
        keep,
    )
    return out.reshape(x.shape), keep.reshape(x.shape)


def dropout_backward_numba(dy, keep, p):
    dyf = np.ascontiguousarray(dy).reshape(-1)
    dx = np.empty_like(dyf)
    _dropout_bwd(dyf, np.ascontiguousarray(keep).reshape(-1), dy.dtype.type(1.0 / (1.0 - p)), dx)
    return dx.reshape(dy.shape)
