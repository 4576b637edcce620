"""Scaled dot-product attention over (B, nh, T, hs), forward and backward, with an
optional causal mask aligned to the end of the keys: query i of Tq sees keys
j <= i + Tk - Tq, so a KV-cache decoder can call it with Tq = 1 over Tk cached keys.

    attention_forward(q, k, v, causal) -> (out, att)
        q (B, nh, Tq, hs), k and v (B, nh, Tk, hs); att = softmax(q @ k^T / sqrt(hs) + mask)
        (B, nh, Tq, Tk), out = att @ v (B, nh, Tq, hs)
    attention_backward(dout, q, k, v, att) -> (dq, dk, dv)
        dv = att^T @ dout, datt = dout @ v^T, ds = att * (datt - rowsum(datt * att)),
        dq = ds @ k / sqrt(hs), dk = ds^T @ q / sqrt(hs)

The probabilities `att` are all the backward needs besides the inputs. Both backends do
the four products as batched BLAS calls (a row-by-row Numba loop lost to torch,
PERF_NOTES); the Numba backend fuses scale, mask and softmax (and the softmax backward)
into one parallel pass over the rows of the score matrix, in place.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from npllm.kernels._jit import fexp, jit

KERNELS = ("attention_forward", "attention_backward")


# ---- NumPy reference -------------------------------------------------------------------
def attention_forward_numpy(q, k, v, causal=True):
    tq, tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    s = (q @ np.swapaxes(k, -1, -2)) * q.dtype.type(1.0 / math.sqrt(hs))  # (B, nh, Tq, Tk)
    if causal:
        mask = np.triu(np.ones((tq, tk), dtype=bool), k=tk - tq + 1)
        s[..., mask] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    att = np.exp(s, out=s)
    att /= att.sum(axis=-1, keepdims=True)
    return att @ v, att


def attention_backward_numpy(dout, q, k, v, att):
    # out = att @ v, att = softmax(q @ k^T * scale)
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    dv = np.swapaxes(att, -1, -2) @ dout
    datt = dout @ np.swapaxes(v, -1, -2)
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    ds *= scale
    return ds @ k, np.swapaxes(ds, -1, -2) @ q, dv


# ---- Numba -----------------------------------------------------------------------------
@jit(parallel=True)
def _masked_softmax_rows(s, scale, tq, offset):
    # s: (R, Tk) scores, rows ordered (b, h, i); row r is query i = r % tq, which sees
    # keys j < i + offset + 1. Scaled, masked and normalised in place.
    rows, tk = s.shape
    t = s.dtype.type
    for r in prange(rows):
        lim = min(tk, r % tq + offset + 1)
        mx = s[r, 0] * scale
        for j in range(lim):
            mx = max(mx, s[r, j] * scale)
        tot = t(0)
        for j in range(lim):
            e = fexp(s[r, j] * scale - mx)
            s[r, j] = e
            tot += e
        inv = t(1) / tot
        for j in range(lim):
            s[r, j] *= inv
        for j in range(lim, tk):
            s[r, j] = t(0)


@jit(parallel=True)
def _softmax_bwd_rows(datt, att, scale, tq, offset):
    # datt <- att * (datt - rowsum(datt * att)) * scale, in place, over the unmasked part
    rows, tk = att.shape
    t = att.dtype.type
    for r in prange(rows):
        lim = min(tk, r % tq + offset + 1)
        acc = t(0)
        for j in range(lim):
            acc += datt[r, j] * att[r, j]
        for j in range(lim):
            datt[r, j] = att[r, j] * (datt[r, j] - acc) * scale
        for j in range(lim, tk):
            datt[r, j] = t(0)


def attention_forward_numba(q, k, v, causal=True):
    tq, tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    s = np.matmul(q, np.swapaxes(k, -1, -2))  # (B, nh, Tq, Tk), a fresh C-contiguous array
    if s.size:
        offset = tk - tq if causal else tk
        _masked_softmax_rows(s.reshape(-1, tk), q.dtype.type(1.0 / math.sqrt(hs)), tq, offset)
    return np.matmul(s, v), s


def attention_backward_numba(dout, q, k, v, att):
    tq, tk, hs = att.shape[-2], att.shape[-1], q.shape[-1]
    dv = np.matmul(np.swapaxes(att, -1, -2), dout)
    datt = np.matmul(dout, np.swapaxes(v, -1, -2))  # fresh, C-contiguous
    att_c = np.ascontiguousarray(att)
    if datt.size:
        # masked entries of att are exactly 0, so the full row (offset = tk) is correct;
        # passing the causal limit would only skip work, which the caller does not know
        _softmax_bwd_rows(
            datt.reshape(-1, tk), att_c.reshape(-1, tk), q.dtype.type(1.0 / math.sqrt(hs)), tq, tk
        )
    return np.matmul(datt, k), np.matmul(np.swapaxes(datt, -1, -2), q), dv
