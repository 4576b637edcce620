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
# Serial loops from index 0 over contiguous slices (what vectorises), chunked across
# threads only for large arrays (see activations.py).
_PAR_MIN = 1 << 16


@jit
def _fwd(x, u, p, scale, out, keep):
    zero = x.dtype.type(0)
    for i in range(x.size):
        k = u[i] >= p
        keep[i] = k
        out[i] = x[i] * scale if k else zero


@jit
def _bwd(dy, keep, scale, dx):
    zero = dy.dtype.type(0)
    for i in range(dy.size):
        dx[i] = dy[i] * scale if keep[i] else zero


@jit(parallel=True)
def _fwd_par(x, u, p, scale, out, keep, nchunks):
    n = x.size
    per = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        lo = c * per
        hi = min(n, lo + per)
        _fwd(x[lo:hi], u[lo:hi], p, scale, out[lo:hi], keep[lo:hi])


@jit(parallel=True)
def _bwd_par(dy, keep, scale, dx, nchunks):
    n = dy.size
    per = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        lo = c * per
        hi = min(n, lo + per)
        _bwd(dy[lo:hi], keep[lo:hi], scale, dx[lo:hi])


def _chunks(n: int) -> int:
    return 2 * min(8, n // _PAR_MIN)


def dropout_forward_numba(x, u, p):
    xf = np.ascontiguousarray(x).reshape(-1)
    uf = np.ascontiguousarray(u).reshape(-1)
    out = np.empty_like(xf)
    keep = np.empty(xf.shape, dtype=np.bool_)
    args = (xf, uf, u.dtype.type(p), x.dtype.type(1.0 / (1.0 - p)), out, keep)
    if xf.size < _PAR_MIN:
        _fwd(*args)
    else:
        _fwd_par(*args, _chunks(xf.size))
    return out.reshape(x.shape), keep.reshape(x.shape)


def dropout_backward_numba(dy, keep, p):
    dyf = np.ascontiguousarray(dy).reshape(-1)
    dx = np.empty_like(dyf)
    args = (dyf, np.ascontiguousarray(keep).reshape(-1), dy.dtype.type(1.0 / (1.0 - p)), dx)
    if dyf.size < _PAR_MIN:
        _bwd(*args)
    else:
        _bwd_par(*args, _chunks(dyf.size))
    return dx.reshape(dy.shape)
