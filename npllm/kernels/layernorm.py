"""Layer normalisation over the last axis of a 2-D (N, C) array, as llm.c's
layernorm_forward/backward: the forward caches the per-row mean and rstd so the backward
never recomputes them.

    layernorm_forward(x, w, b, eps) -> (out, mean, rstd)
        xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps) (biased var), out = xhat * w + b
    layernorm_backward(dout, x, mean, rstd, w) -> (dx, dw, db)
        dxhat = dout * w
        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        dw = sum_rows(dout * xhat), db = sum_rows(dout)

`w` and `b` may be None (no affine transform; dw is then None, db is always returned).
mean and rstd are (N,) arrays in the input dtype.
"""

from __future__ import annotations

import numpy as np

from npllm.kernels._jit import chunk_of, jit, per_chunk, run, wide_vectors

KERNELS = ("layernorm_forward", "layernorm_backward")


# ---- NumPy reference -------------------------------------------------------------------
def layernorm_forward_numpy(x, w, b, eps):
    mean = x.mean(axis=-1)
    xc = x - mean[:, None]
    var = (xc * xc).mean(axis=-1)
    rstd = (1 / np.sqrt(var + x.dtype.type(eps))).astype(x.dtype, copy=False)
    out = xc * rstd[:, None]
    if w is not None:
        out *= w
    if b is not None:
        out += b
    return out, mean, rstd


def layernorm_backward_numpy(dout, x, mean, rstd, w):
    # out = xhat * w + b, xhat = (x - mean) * rstd  =>  dxhat = dout * w,
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) (the two means: through
    # mean and rstd), dw = sum_rows(dout * xhat), db = sum_rows(dout)
    xhat = (x - mean[:, None]) * rstd[:, None]
    dxhat = dout * w if w is not None else dout
    dx = rstd[:, None] * (
        dxhat
        - dxhat.mean(axis=-1, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    )
    dw = (dout * xhat).sum(axis=0) if w is not None else None
    db = dout.sum(axis=0)
    return dx, dw, db


# ---- Numba -----------------------------------------------------------------------------
# Serial kernels over rows lo..hi, run by `_jit.run` (chunks of rows in parallel for large
# inputs; serially below _jit.PAR_MIN, e.g. one token at a time when decoding).
@jit
def _ln_fwd(x, w, b, eps, out, mean, rstd, lo, hi):
    # xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps), out = xhat * w + b
    wide_vectors()
    c = x.shape[1]
    t = x.dtype.type
    inv_c = t(1) / t(c)
    for i in range(lo, hi):
        s = t(0)
        for j in range(c):
            s += x[i, j]
        m = s * inv_c
        v = t(0)
        for j in range(c):
            d = x[i, j] - m
            v += d * d
        r = t(1) / np.sqrt(v * inv_c + eps)
        for j in range(c):
            out[i, j] = (x[i, j] - m) * r * w[j] + b[j]
        mean[i] = m
        rstd[i] = r


@jit
def _ln_bwd(dout, x, mean, rstd, w, dx, dw_part, db_part, lo, hi):
    # out = xhat * w + b  =>  dxhat = dout * w,
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) (mean and rstd depend on
    # x too: their terms are the two means), dw = sum_rows(dout * xhat), db = sum_rows(dout).
    # dw, db of these rows go to this chunk's row of the partial sums (summed afterwards).
    wide_vectors()
    c = x.shape[1]
    t = x.dtype.type
    inv_c = t(1) / t(c)
    p = chunk_of(lo, x.shape[0], dw_part.shape[0])
    dw_row, db_row = dw_part[p], db_part[p]
    for i in range(lo, hi):
        m = mean[i]
        r = rstd[i]
        s1 = t(0)
        s2 = t(0)
        for j in range(c):
            xhat = (x[i, j] - m) * r
            g = dout[i, j] * w[j]
            s1 += g
            s2 += g * xhat
            dw_row[j] += dout[i, j] * xhat
            db_row[j] += dout[i, j]
        s1 *= inv_c
        s2 *= inv_c
        for j in range(c):
            xhat = (x[i, j] - m) * r
            dx[i, j] = r * (dout[i, j] * w[j] - s1 - xhat * s2)


def layernorm_forward_numba(x, w, b, eps):
    x = np.ascontiguousarray(x)
    n, c = x.shape
    dt = x.dtype
    w_ = np.ones(c, dt) if w is None else np.ascontiguousarray(w)
    b_ = np.zeros(c, dt) if b is None else np.ascontiguousarray(b)
    out = np.empty_like(x)
    mean = np.empty(n, dt)
    rstd = np.empty(n, dt)
    run(_ln_fwd, (x, w_, b_, dt.type(eps), out, mean, rstd), n, x.size)
    return out, mean, rstd


def layernorm_backward_numba(dout, x, mean, rstd, w):
    dout, x = np.ascontiguousarray(dout), np.ascontiguousarray(x)
    mean, rstd = np.ascontiguousarray(mean), np.ascontiguousarray(rstd)
    n, c = x.shape
    dt = x.dtype
    w_ = np.ones(c, dt) if w is None else np.ascontiguousarray(w)
    dw_part = per_chunk(n, x.size, c, dt)
    db_part = per_chunk(n, x.size, c, dt)
    dx = np.empty_like(x)
    run(_ln_bwd, (dout, x, mean, rstd, w_, dx, dw_part, db_part), n, x.size)
    dw = dw_part.sum(axis=0) if w is not None else None
    return dx, dw, db_part.sum(axis=0)
