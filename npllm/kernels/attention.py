"""Scaled dot-product attention over (B, nh, T, hs), forward and backward, with an
optional causal mask aligned to the end of the keys: query i of Tq sees keys
j <= i + Tk - Tq, so a KV-cache decoder can call it with Tq = 1 over Tk cached keys.

    attention_forward(q, k, v, causal) -> (out, att)
        q (B, nh, Tq, hs), k and v (B, nh, Tk, hs); att = softmax(q @ k^T / sqrt(hs) + mask)
        (B, nh, Tq, Tk), out = att @ v (B, nh, Tq, hs)
    attention_backward(dout, q, k, v, att, causal) -> (dq, dk, dv)
        dv = att^T @ dout, datt = dout @ v^T, ds = att * (datt - rowsum(datt * att)),
        dq = ds @ k / sqrt(hs), dk = ds^T @ q / sqrt(hs)

The probabilities `att` are all the backward needs besides the inputs (masked entries are
exactly 0; `causal` only lets the backward skip them). The NumPy reference does the
products as batched matmuls, with transposed operands made contiguous first (NumPy's
stacked matmul falls off BLAS onto a loop 10-40x slower when the second operand is a
transposed view). The Numba kernel is a fused per-head kernel, described below.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from npllm.kernels._jit import fexp, jit, n_chunks

KERNELS = ("attention_forward", "attention_backward")


# ---- NumPy reference -------------------------------------------------------------------
def _t(a: np.ndarray) -> np.ndarray:
    """The last two axes swapped, C-contiguous: keeps np.matmul on its BLAS path."""
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


def attention_forward_numpy(q, k, v, causal=True):
    tq, tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    s = (q @ _t(k)) * q.dtype.type(1.0 / math.sqrt(hs))  # (B, nh, Tq, Tk)
    if causal:
        mask = np.triu(np.ones((tq, tk), dtype=bool), k=tk - tq + 1)
        s[..., mask] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    att = np.exp(s, out=s)
    att /= att.sum(axis=-1, keepdims=True)
    return att @ v, att


def attention_backward_numpy(dout, q, k, v, att, causal=True):
    # out = att @ v, att = softmax(q @ k^T * scale)
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    dv = _t(att) @ dout
    datt = dout @ _t(v)
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    ds *= scale
    return ds @ k, _t(ds) @ q, dv


# ---- Numba -----------------------------------------------------------------------------
# One head per prange task (B*nh of them), everything for that head fused, and the causal
# mask used to skip the upper triangle (half the FLOPs), which batched BLAS cannot.
# All five products are "A times B-transposed" over contiguous rows, done by `_nt` in
# register-blocked form: a block of 4 rows of A against 2 rows of B keeps 8 running sums
# in registers while one loop walks the shared dimension, vectorised. This was 2x faster
# than the axpy form (row of out += a * row of B), which stores a row per term.
@jit
def _dot(a, b, n):
    acc = a.dtype.type(0)
    for k in range(n):
        acc += a[k] * b[k]
    return acc


@jit
def _nt(a, b, out, scale, offset, mode):
    """out[i, j] = scale * sum_k a[i, k] * b[j, k], for the (i, j) and k the mask needs.
    mode 0 (scores, S = Q K^T): all k; j < i + offset + 1 (whole 4-row blocks may compute
    up to their last row's limit; the caller masks).
    mode 1 (P V, dS K): all j; k < i + offset + 1 (a's entries past that are 0).
    mode 2 (dS^T Q, P^T dO, rows are keys): all j; k >= i - offset (first query seeing key i).
    """
    m, kdim = a.shape
    n = b.shape[0]
    for i0 in range(0, m, 4):
        nr = min(4, m - i0)
        last = i0 + nr - 1
        if mode == 0:
            jhi, klo, khi = min(n, last + offset + 1), 0, kdim
        elif mode == 1:
            jhi, klo, khi = n, 0, min(kdim, last + offset + 1)
        else:
            jhi, klo, khi = n, min(kdim, max(0, i0 - offset)), kdim
        # every inner loop runs from 0 over slices: a loop from klo > 0 stays scalar
        kn = khi - klo
        if nr == 4:
            a0, a1 = a[i0, klo:khi], a[i0 + 1, klo:khi]
            a2, a3 = a[i0 + 2, klo:khi], a[i0 + 3, klo:khi]
            for j in range(0, jhi - 1, 2):
                ba, bb = b[j, klo:khi], b[j + 1, klo:khi]
                s0 = s1 = s2 = s3 = a.dtype.type(0)
                t0 = t1 = t2 = t3 = a.dtype.type(0)
                for k in range(kn):
                    x, y = ba[k], bb[k]
                    s0 += a0[k] * x
                    s1 += a1[k] * x
                    s2 += a2[k] * x
                    s3 += a3[k] * x
                    t0 += a0[k] * y
                    t1 += a1[k] * y
                    t2 += a2[k] * y
                    t3 += a3[k] * y
                out[i0, j], out[i0 + 1, j] = s0 * scale, s1 * scale
                out[i0 + 2, j], out[i0 + 3, j] = s2 * scale, s3 * scale
                out[i0, j + 1], out[i0 + 1, j + 1] = t0 * scale, t1 * scale
                out[i0 + 2, j + 1], out[i0 + 3, j + 1] = t2 * scale, t3 * scale
            if jhi % 2:
                for r in range(4):
                    out[i0 + r, jhi - 1] = _dot(a[i0 + r, klo:], b[jhi - 1, klo:], kn) * scale
        else:
            for r in range(nr):
                for j in range(jhi):
                    out[i0 + r, j] = _dot(a[i0 + r, klo:], b[j, klo:], kn) * scale


@jit
def _attn_fwd_head(q, k, v, scale, offset, out, s):
    """One head: q (Tq, hs), k, v (Tk, hs) -> out (Tq, hs), s (Tq, Tk) probabilities."""
    tq = q.shape[0]
    tk = k.shape[0]
    t = q.dtype.type
    _nt(q, k, s, scale, offset, 0)  # scores, then probabilities in place
    for i in range(tq):
        lim = min(tk, i + offset + 1)
        srow = s[i]
        mx = srow[0]
        for j in range(lim):
            mx = max(mx, srow[j])
        tot = t(0)
        for j in range(lim):
            e = fexp(srow[j] - mx)
            srow[j] = e
            tot += e
        inv = t(1) / tot
        for j in range(lim):
            srow[j] *= inv
        for j in range(lim, tk):
            srow[j] = t(0)
    _nt(s, np.ascontiguousarray(v.T), out, t(1), offset, 1)  # out = P V


@jit
def _attn_bwd_head(dout, q, k, v, p, scale, offset, dq, dk, dv):
    """One head's dq, dk, dv from dout (Tq, hs) and the probabilities p (Tq, Tk)."""
    tq = q.shape[0]
    tk = k.shape[0]
    t = q.dtype.type
    ds = np.empty((tq, tk), dtype=q.dtype)
    _nt(dout, v, ds, t(1), offset, 0)  # datt = dout v^T
    for i in range(tq):  # ds = att * (datt - rowsum(datt * att)) * scale
        lim = min(tk, i + offset + 1)
        dsr, pr = ds[i], p[i]
        acc = _dot(dsr, pr, lim)
        for j in range(lim):
            dsr[j] = pr[j] * (dsr[j] - acc) * scale
        for j in range(lim, tk):
            dsr[j] = t(0)
    _nt(ds, np.ascontiguousarray(k.T), dq, t(1), offset, 1)  # dq = ds k
    _nt(np.ascontiguousarray(ds.T), np.ascontiguousarray(q.T), dk, t(1), offset, 2)  # ds^T q
    _nt(np.ascontiguousarray(p.T), np.ascontiguousarray(dout.T), dv, t(1), offset, 2)  # p^T do


@jit(parallel=True)
def _attn_fwd_par(q, k, v, scale, offset, out, att):
    for h in prange(q.shape[0]):
        _attn_fwd_head(q[h], k[h], v[h], scale, offset, out[h], att[h])


@jit(parallel=True)
def _attn_bwd_par(dout, q, k, v, att, scale, offset, dq, dk, dv):
    for h in prange(q.shape[0]):
        _attn_bwd_head(dout[h], q[h], k[h], v[h], att[h], scale, offset, dq[h], dk[h], dv[h])


def _heads(a: np.ndarray) -> np.ndarray:
    """(B, nh, T, hs) -> (B*nh, T, hs), C-contiguous."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-2], a.shape[-1])


def attention_forward_numba(q, k, v, causal=True):
    b, nh, tq, hs = q.shape
    tk = k.shape[-2]
    out = np.empty((b * nh, tq, hs), dtype=q.dtype)
    att = np.empty((b * nh, tq, tk), dtype=q.dtype)
    offset = tk - tq if causal else tk
    q3, k3, v3, scale = _heads(q), _heads(k), _heads(v), q.dtype.type(1.0 / math.sqrt(hs))
    if n_chunks(b * nh, b * nh * tq * tk * hs):  # one parallel task per head
        _attn_fwd_par(q3, k3, v3, scale, offset, out, att)
    else:  # small (e.g. decoding one token): a loop here costs less than waking a thread
        for h in range(b * nh):
            _attn_fwd_head(q3[h], k3[h], v3[h], scale, offset, out[h], att[h])
    return out.reshape(b, nh, tq, hs), att.reshape(b, nh, tq, tk)


def attention_backward_numba(dout, q, k, v, att, causal=True):
    b, nh, tq, hs = q.shape
    tk = k.shape[-2]
    q3, k3 = _heads(q), _heads(k)
    dq, dk, dv = np.empty_like(q3), np.empty_like(k3), np.empty_like(k3)
    offset = tk - tq if causal else tk  # only to skip work: masked att entries are 0
    a3 = np.ascontiguousarray(att).reshape(-1, tq, tk)
    do3, v3, scale = _heads(dout), _heads(v), q.dtype.type(1.0 / math.sqrt(hs))
    if n_chunks(b * nh, b * nh * tq * tk * hs):
        _attn_bwd_par(do3, q3, k3, v3, a3, scale, offset, dq, dk, dv)
    else:
        for h in range(b * nh):
            _attn_bwd_head(do3[h], q3[h], k3[h], v3[h], a3[h], scale, offset, dq[h], dk[h], dv[h])
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(k.shape)
