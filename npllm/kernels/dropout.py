"""Inverted dropout, given the uniform draws (the RNG stays outside the kernel, so the
caller's numpy Generator is the only source of randomness).

    dropout_forward(x, u, p) -> (out, keep)     keep = u >= p, out = x * keep / (1 - p)
    dropout_backward(dy, keep, p) -> dx         dx = dy * keep / (1 - p)

`u` has x's shape, uniform in [0, 1); `keep` is a bool array, the only thing saved.
"""

from __future__ import annotations

import numpy as np

from npllm.kernels._jit import flat, jit, run

KERNELS = ("dropout_forward", "dropout_backward")


# ---- NumPy reference -------------------------------------------------------------------
def dropout_forward_numpy(x, u, p):
    keep = u >= p
    return x * keep * x.dtype.type(1.0 / (1.0 - p)), keep


def dropout_backward_numpy(dy, keep, p):
    # out = x * keep / (1 - p), linear in x  =>  dx = dy * keep / (1 - p)
    return dy * keep * dy.dtype.type(1.0 / (1.0 - p))


# ---- Numba -----------------------------------------------------------------------------
# Serial loops over elements lo..hi (slices walked from index 0: what vectorises), run by
# `_jit.run` (chunks in parallel for large arrays).
@jit
def _fwd(x, u, p, scale, out, keep, lo, hi):
    # keep = u >= p, out = x * keep * scale, scale = 1 / (1 - p)
    x, u, out, keep = x[lo:hi], u[lo:hi], out[lo:hi], keep[lo:hi]
    zero = x.dtype.type(0)
    for i in range(x.size):
        k = u[i] >= p
        keep[i] = k
        out[i] = x[i] * scale if k else zero


@jit
def _bwd(dy, keep, scale, dx, lo, hi):
    # out = x * keep * scale  =>  dx = dy * keep * scale
    dy, keep, dx = dy[lo:hi], keep[lo:hi], dx[lo:hi]
    zero = dy.dtype.type(0)
    for i in range(dy.size):
        dx[i] = dy[i] * scale if keep[i] else zero


def dropout_forward_numba(x, u, p):
    xf = flat(x)
    out = np.empty_like(xf)
    keep = np.empty(xf.shape, dtype=np.bool_)
    scale = x.dtype.type(1.0 / (1.0 - p))
    run(_fwd, (xf, flat(u), u.dtype.type(p), scale, out, keep), xf.size)
    return out.reshape(x.shape), keep.reshape(x.shape)


def dropout_backward_numba(dy, keep, p):
    dyf = flat(dy)
    dx = np.empty_like(dyf)
    run(_bwd, (dyf, flat(keep), dy.dtype.type(1.0 / (1.0 - p)), dx), dyf.size)
    return dx.reshape(dy.shape)
