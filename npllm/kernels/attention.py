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

from npllm.kernels._jit import fexp, jit

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
# One head per prange task (B*nh of them), everything for that head fused in one pass over
# its rows, and the causal mask used to skip the upper triangle (half the FLOPs), which
# batched BLAS cannot. Inner loops are written as axpy's over a contiguous row starting
# at 0 (what LLVM vectorises): S = Q K^T goes through a per-head K^T copy, so that each
# row of S is sum_d q[i, d] * Kt[d, :]. Four query rows are processed together so each
# loaded row of Kt / V / K feeds four FMAs.
@jit(parallel=True)
def _attn_fwd(q, k, v, scale, offset, out, att):
    nb, tq, hs = q.shape
    tk = k.shape[1]
    t = q.dtype.type
    for h in prange(nb):
        kt = np.ascontiguousarray(k[h].T)  # (hs, Tk)
        vh = v[h]
        for i0 in range(0, tq, 4):
            i1 = min(tq, i0 + 4)
            lim_hi = min(tk, i1 - 1 + offset + 1)  # keys the last row of the block sees
            s = att[h, i0:i1]  # (<=4, Tk), scores then probabilities, in place
            s[:, :lim_hi] = t(0)
            for d in range(hs):
                krow = kt[d, :lim_hi]
                for r in range(i1 - i0):
                    qd = q[h, i0 + r, d] * scale
                    srow = s[r]
                    for j in range(lim_hi):
                        srow[j] += qd * krow[j]
            for r in range(i1 - i0):
                lim = min(tk, i0 + r + offset + 1)
                srow = s[r]
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
            o = out[h, i0:i1]
            o[:, :] = t(0)
            for j in range(lim_hi):
                vrow = vh[j]
                for r in range(i1 - i0):
                    p = s[r, j]
                    orow = o[r]
                    for d in range(hs):
                        orow[d] += p * vrow[d]


@jit(parallel=True)
def _attn_bwd(dout, q, k, v, att, scale, offset, dq, dk, dv):
    nb, tq, hs = q.shape
    tk = k.shape[1]
    t = q.dtype.type
    for h in prange(nb):
        vt = np.ascontiguousarray(v[h].T)  # (hs, Tk)
        ds = np.empty((4, tk), dtype=q.dtype)
        kh, qh, doh, dqh, dkh, dvh = k[h], q[h], dout[h], dq[h], dk[h], dv[h]
        for i0 in range(0, tq, 4):
            i1 = min(tq, i0 + 4)
            nr = i1 - i0
            lim_hi = min(tk, i1 - 1 + offset + 1)
            # datt = dout @ v^T on the unmasked part, four rows at once
            ds[:, :lim_hi] = t(0)
            for d in range(hs):
                vrow = vt[d, :lim_hi]
                for r in range(nr):
                    g = doh[i0 + r, d]
                    dsr = ds[r]
                    for j in range(lim_hi):
                        dsr[j] += g * vrow[j]
            # ds = att * (datt - rowsum(datt * att)) * scale
            for r in range(nr):
                lim = min(tk, i0 + r + offset + 1)
                prow = att[h, i0 + r]
                dsr = ds[r]
                acc = t(0)
                for j in range(lim):
                    acc += dsr[j] * prow[j]
                for j in range(lim):
                    dsr[j] = prow[j] * (dsr[j] - acc) * scale
                for j in range(lim, lim_hi):
                    dsr[j] = t(0)
            # dq[i] += ds[i, j] k[j]; dk[j] += ds[i, j] q[i]; dv[j] += att[i, j] dout[i]
            for j in range(lim_hi):
                krow, dkrow, dvrow = kh[j], dkh[j], dvh[j]
                for r in range(nr):
                    i = i0 + r
                    g = ds[r, j]
                    p = att[h, i, j]
                    qrow, dqrow, dorow = qh[i], dqh[i], doh[i]
                    for d in range(hs):
                        dqrow[d] += g * krow[d]
                        dkrow[d] += g * qrow[d]
                        dvrow[d] += p * dorow[d]


def _heads(a: np.ndarray) -> np.ndarray:
    """(B, nh, T, hs) -> (B*nh, T, hs), C-contiguous."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-2], a.shape[-1])


def attention_forward_numba(q, k, v, causal=True):
    b, nh, tq, hs = q.shape
    tk = k.shape[-2]
    out = np.empty((b * nh, tq, hs), dtype=q.dtype)
    att = np.empty((b * nh, tq, tk), dtype=q.dtype)
    offset = tk - tq if causal else tk
    _attn_fwd(_heads(q), _heads(k), _heads(v), q.dtype.type(1.0 / math.sqrt(hs)), offset, out, att)
    return out.reshape(b, nh, tq, hs), att.reshape(b, nh, tq, tk)


def attention_backward_numba(dout, q, k, v, att, causal=True):
    b, nh, tq, hs = q.shape
    tk = k.shape[-2]
    q3, k3 = _heads(q), _heads(k)
    dq, dk, dv = np.zeros_like(q3), np.zeros_like(k3), np.zeros_like(k3)
    offset = tk - tq if causal else tk  # only to skip work: masked att entries are 0
    a3 = np.ascontiguousarray(att).reshape(-1, tq, tk)
    _attn_bwd(
        _heads(dout), q3, k3, _heads(v), a3, q.dtype.type(1.0 / math.sqrt(hs)), offset, dq, dk, dv
    )
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(k.shape)
