"""RMS normalisation over the last axis of a 2-D (N, C) array (Llama's RMSNorm): LayerNorm
without the mean, and without a bias. The forward caches rstd for the backward.

    rmsnorm_forward(x, w, eps) -> (out, rstd)
        rstd = 1 / sqrt(mean(x^2) + eps), xhat = x * rstd, out = xhat * w
    rmsnorm_backward(dout, x, rstd, w) -> (dx, dw)
        dxhat = dout * w
        dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
        dw = sum_rows(dout * xhat)

Derivation: xhat_j = x_j r with r = (mean(x^2) + eps)^-1/2, dr/dx_k = -r^3 x_k / C, so
dx_k = r dxhat_k - x_k r^3 / C sum_j dxhat_j x_j = r (dxhat_k - xhat_k mean(dxhat xhat)):
LayerNorm's rule without the mean(dxhat) term. `w` may be None (dw is then None).
"""

from __future__ import annotations

import numpy as np

from npllm.kernels._jit import chunk_of, jit, per_chunk, run

KERNELS = ("rmsnorm_forward", "rmsnorm_backward")


# ---- NumPy reference -------------------------------------------------------------------
def rmsnorm_forward_numpy(x, w, eps):
    ms = (x * x).mean(axis=-1)
    rstd = (1 / np.sqrt(ms + x.dtype.type(eps))).astype(x.dtype, copy=False)
    out = x * rstd[:, None]
    if w is not None:
        out *= w
    return out, rstd


def rmsnorm_backward_numpy(dout, x, rstd, w):
    # out = xhat * w, xhat = x * rstd  =>  dxhat = dout * w,
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), dw = sum_rows(dout * xhat)
    xhat = x * rstd[:, None]
    dxhat = dout * w if w is not None else dout
    dx = rstd[:, None] * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    dw = (dout * xhat).sum(axis=0) if w is not None else None
    return dx, dw


# ---- Numba -----------------------------------------------------------------------------
# As layernorm.py: serial kernels over rows lo..hi, run by `_jit.run`; the decode step
# calls `_rms_fwd` directly.
@jit
def _rms_fwd(x, w, eps, out, rstd, lo, hi):
    # rstd = 1 / sqrt(mean(x^2) + eps), out = x * rstd * w
    c = x.shape[1]
    t = x.dtype.type
    inv_c = t(1) / t(c)
    for i in range(lo, hi):
        s = t(0)
        for j in range(c):
            s += x[i, j] * x[i, j]
        r = t(1) / np.sqrt(s * inv_c + eps)
        for j in range(c):
            out[i, j] = x[i, j] * r * w[j]
        rstd[i] = r


@jit
def _rms_bwd(dout, x, rstd, w, dx, dw_part, lo, hi):
    # out = xhat * w, xhat = x * rstd  =>  dxhat = dout * w,
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), dw = sum_rows(dout * xhat)
    c = x.shape[1]
    t = x.dtype.type
    inv_c = t(1) / t(c)
    dw_row = dw_part[chunk_of(lo, x.shape[0], dw_part.shape[0])]
    for i in range(lo, hi):
        r = rstd[i]
        s = t(0)
        for j in range(c):
            xhat = x[i, j] * r
            s += dout[i, j] * w[j] * xhat
            dw_row[j] += dout[i, j] * xhat
        s *= inv_c
        for j in range(c):
            dx[i, j] = r * (dout[i, j] * w[j] - x[i, j] * r * s)


def rmsnorm_forward_numba(x, w, eps):
    x = np.ascontiguousarray(x)
    n, c = x.shape
    w_ = np.ones(c, x.dtype) if w is None else np.ascontiguousarray(w)
    out = np.empty_like(x)
    rstd = np.empty(n, x.dtype)
    run(_rms_fwd, (x, w_, x.dtype.type(eps), out, rstd), n, x.size)
    return out, rstd


def rmsnorm_backward_numba(dout, x, rstd, w):
    dout, x, rstd = np.ascontiguousarray(dout), np.ascontiguousarray(x), np.ascontiguousarray(rstd)
    n, c = x.shape
    w_ = np.ones(c, x.dtype) if w is None else np.ascontiguousarray(w)
    dw_part = per_chunk(n, x.size, c, x.dtype)
    dx = np.empty_like(x)
    run(_rms_bwd, (dout, x, rstd, w_, dx, dw_part), n, x.size)
    return dx, (dw_part.sum(axis=0) if w is not None else None)
