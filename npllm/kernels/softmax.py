"""Softmax and log-softmax over the last axis of a 2-D (rows, n) array, forward and
backward, numerically stable (the row maximum is subtracted before exp).

    softmax_forward(x) -> y                    y = exp(x - max) / sum(exp(x - max))
    softmax_backward(dy, y) -> dx              dx = y * (dy - sum(dy * y))
    log_softmax_forward(x) -> y                y = x - max - log(sum(exp(x - max)))
    log_softmax_backward(dy, y) -> dx          dx = dy - exp(y) * sum(dy)

Inputs may be non-contiguous; outputs are new C-contiguous arrays of the input dtype.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from npllm.kernels._jit import fexp, fmax, jit, n_chunks

KERNELS = ("softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward")


# ---- NumPy reference -------------------------------------------------------------------
def softmax_forward_numpy(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def softmax_backward_numpy(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    # y = softmax(x)  =>  dx = y * (dy - <dy, y>)
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax_forward_numpy(x: np.ndarray) -> np.ndarray:
    s = x - x.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def log_softmax_backward_numpy(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    # y = x - logsumexp(x)  =>  dx = dy - softmax(x) * sum(dy)
    return dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)


# ---- Numba -----------------------------------------------------------------------------
# Rows are independent: a serial kernel over a range of rows, run on chunks of rows in
# parallel for large inputs (serially below _jit.PAR_MIN), a vectorised pass per row.
# Every constant is made in the input's dtype (`t(0)`): in Numba a Python literal promotes
# float32 math to float64, which halves the vector width and sends fexp to its float64
# branch. The running max starts at x[i, 0], never a float64 -inf literal
# (docs/performance.md, "Numba habits").
@jit(inline=True)
def softmax_row(x, out, log):
    """One 1-D row: out = softmax(x) (or log_softmax); out may be x itself. Also the
    attention kernel's softmax, on each row's visible keys."""
    t = x.dtype.type
    mx = x[0]
    for j in range(x.size):
        mx = fmax(mx, x[j])
    s = t(0)
    for j in range(x.size):
        e = fexp(x[j] - mx)
        out[j] = e
        s += e
    if log:
        lse = mx + np.log(s)
        for j in range(x.size):
            out[j] = x[j] - lse
    else:
        r = t(1) / s
        for j in range(x.size):
            out[j] *= r


@jit
def _softmax_rows(x, out, log, lo, hi):
    for i in range(lo, hi):
        softmax_row(x[i], out[i], log)


@jit
def _softmax_bwd_rows(dy, y, dx, log, lo, hi):
    m = y.shape[1]
    t = y.dtype.type
    for i in range(lo, hi):
        s = t(0)
        if log:
            for j in range(m):
                s += dy[i, j]
            for j in range(m):
                dx[i, j] = dy[i, j] - fexp(y[i, j]) * s
        else:
            for j in range(m):
                s += dy[i, j] * y[i, j]
            for j in range(m):
                dx[i, j] = y[i, j] * (dy[i, j] - s)


@jit(parallel=True)
def _softmax_par(x, out, log, nchunks):
    n = x.shape[0]
    per = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        _softmax_rows(x, out, log, c * per, min(n, (c + 1) * per))


@jit(parallel=True)
def _softmax_bwd_par(dy, y, dx, log, nchunks):
    n = y.shape[0]
    per = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        _softmax_bwd_rows(dy, y, dx, log, c * per, min(n, (c + 1) * per))


def _fwd(x: np.ndarray, log: bool) -> np.ndarray:
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    k = n_chunks(x.shape[0], x.size)
    if k:
        _softmax_par(x, out, log, k)
    elif x.size:
        _softmax_rows(x, out, log, 0, x.shape[0])
    return out


def _bwd(dy: np.ndarray, y: np.ndarray, log: bool) -> np.ndarray:
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = np.empty_like(y)
    k = n_chunks(y.shape[0], y.size)
    if k:
        _softmax_bwd_par(dy, y, dx, log, k)
    elif y.size:
        _softmax_bwd_rows(dy, y, dx, log, 0, y.shape[0])
    return dx


def softmax_forward_numba(x: np.ndarray) -> np.ndarray:
    return _fwd(x, False)


def softmax_backward_numba(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _bwd(dy, y, False)


def log_softmax_forward_numba(x: np.ndarray) -> np.ndarray:
    return _fwd(x, True)


def log_softmax_backward_numba(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _bwd(dy, y, True)
