"""Causal self-attention straight from the linears' outputs, heads side by side, as a
training step has them: the kernels of `attention` reading each head where it lies.

    attention_qkv_forward(qkv, n_head, causal, window=0, u=None, p=0.0) -> (y, att, keep)
        qkv (B, T, 3C): q, k, v side by side (each C = n_head * hs wide, heads side by side
        in each), one linear's output; y (B, T, C), heads side by side; att (B, nh, T, T).
        With dropout (p > 0, u uniform draws like att): keep = u >= p and
        y = (att * keep / (1 - p)) @ v; keep is None without.
    attention_qkv_backward(dy, qkv, att, n_head, causal, keep=None, p=0.0) -> dqkv

    attention_heads_forward(q, k, v, n_head, n_kv_head, cos, sin, window=0, u=None, p=0.0)
        -> (y, att, keep): the same from three linears' outputs q (B, T, n_head hs) and k, v
        (B, T, n_kv_head hs), query head h reading key/value head h // (n_head / n_kv_head)
        (grouped-query attention); with RoPE tables cos, sin (T, hs/2) (None: no RoPE) q
        and k are turned first, as `rope` does.
    attention_heads_backward(dy, q, k, v, att, n_head, n_kv_head, cos, sin, keep=None,
        p=0.0) -> (dq, dk, dv): dk, dv summed over each group's query heads, and under
        RoPE turned back (a rotation's inverse is its transpose).

Causal only (a training step's attention; the decoder has its own kernels).
"""

from __future__ import annotations

import numpy as np

from npllm.kernels._jit import flat
from npllm.kernels.attention import (
    _backward,
    _forward,
    _grads,
    _heads,
    _merge,
    _side_by_side,
    attention_forward_numpy,
)
from npllm.kernels.rope import rope_backward_numpy, rope_forward_numpy

KERNELS = (
    "attention_qkv_forward",
    "attention_qkv_backward",
    "attention_heads_forward",
    "attention_heads_backward",
)


# ---- NumPy reference -------------------------------------------------------------------
def _split_heads(q, k, v, n_head, n_kv_head, cos, sin):
    """q, k, v as (B, nh, T, hs), k and v repeated per group, q and k turned by RoPE."""
    q, k, v = _heads(q, n_head), _heads(k, n_kv_head), _heads(v, n_kv_head)
    if cos is not None:
        q, k = rope_forward_numpy(q, cos, sin), rope_forward_numpy(k, cos, sin)
    group = n_head // n_kv_head
    return q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)


def attention_heads_forward_numpy(q, k, v, n_head, n_kv_head, cos, sin, window=0, u=None, p=0.0):
    q, k, v = _split_heads(q, k, v, n_head, n_kv_head, cos, sin)
    out, att = attention_forward_numpy(q, k, v, True, window)
    keep = None
    if p > 0:
        keep = u >= q.dtype.type(p)
        out = (att * keep * q.dtype.type(1.0 / (1.0 - p))) @ v
    return _merge(out), att, keep


def attention_heads_backward_numpy(dy, q, k, v, att, n_head, n_kv_head, cos, sin, keep=None,
                                   p=0.0):  # fmt: skip
    qh, kh, vh = _split_heads(q, k, v, n_head, n_kv_head, cos, sin)
    dq, dk, dv = _grads(_heads(dy, n_head), qh, kh, vh, att, keep if p > 0 else None, p)
    b, nh, t, hs = dk.shape
    # k, v repeated per group  =>  their gradients summed over the group's copies
    dk, dv = (g.reshape(b, n_kv_head, nh // n_kv_head, t, hs).sum(axis=2) for g in (dk, dv))
    if cos is not None:  # y = R x  =>  dx = R^T dy
        dq, dk = rope_backward_numpy(dq, cos, sin), rope_backward_numpy(dk, cos, sin)
    return _merge(dq), _merge(dk), _merge(dv)


def attention_qkv_forward_numpy(qkv, n_head, causal=True, window=0, u=None, p=0.0):
    q, k, v = np.split(qkv, 3, axis=-1)
    return attention_heads_forward_numpy(q, k, v, n_head, n_head, None, None, window, u, p)


def attention_qkv_backward_numpy(dy, qkv, att, n_head, causal=True, keep=None, p=0.0):
    q, k, v = np.split(qkv, 3, axis=-1)
    grads = attention_heads_backward_numpy(dy, q, k, v, att, n_head, n_head, None, None, keep, p)
    return np.concatenate(grads, axis=-1)


# ---- Numba -----------------------------------------------------------------------------
def _packed(qkv, n_head):
    """(B, T, C, hs) of qkv (B, T, 3C), and the layout rows of its q, k and v."""
    b, t, width = qkv.shape
    c = width // 3
    hs = c // n_head
    return b, t, c, hs, [_side_by_side(i * c, t, hs, width) for i in range(3)]


def attention_qkv_forward_numba(qkv, n_head, causal=True, window=0, u=None, p=0.0):
    b, t, c, hs, qkv_lay = _packed(qkv, n_head)
    y = np.empty((b, t, c), dtype=qkv.dtype)
    att = np.empty((b, n_head, t, t), dtype=qkv.dtype)
    if not y.size:
        return y, att, None
    x, lay = flat(qkv), (*qkv_lay, _side_by_side(0, t, hs, c))
    keep = _forward(x, x, x, lay, y, att, b, n_head, t, t, hs, causal, window, u, p)
    return y, att, keep


def attention_qkv_backward_numba(dy, qkv, att, n_head, causal=True, keep=None, p=0.0):
    b, t, c, hs, qkv_lay = _packed(qkv, n_head)
    dqkv = np.empty_like(qkv, order="C")  # every entry written: q, k, v cover the width
    if dqkv.size:
        x, d, lay = flat(qkv), dqkv.reshape(-1), (*qkv_lay, _side_by_side(0, t, hs, c), *qkv_lay)
        args = (flat(dy), x, x, x, att, lay, (d, d, d), b, n_head, t, t, hs, causal)
        _backward(*args, keep, p)
    return dqkv


def _three(q, k, n_head, n_kv_head):
    """(B, T, hs, group) and the layout rows of q (and out), k and v."""
    b, t, c = q.shape
    hs, group = c // n_head, n_head // n_kv_head
    kv = _side_by_side(0, t, hs, k.shape[2], group)
    return b, t, hs, group, (_side_by_side(0, t, hs, c), kv, kv)


def attention_heads_forward_numba(q, k, v, n_head, n_kv_head, cos, sin, window=0, u=None, p=0.0):
    b, t, hs, _, (ql, kl, vl) = _three(q, k, n_head, n_kv_head)
    y = np.empty(q.shape, dtype=q.dtype)
    att = np.empty((b, n_head, t, t), dtype=q.dtype)
    if not y.size:
        return y, att, None
    rope = None if cos is None else (cos, sin)
    args = (flat(q), flat(k), flat(v), (ql, kl, vl, ql), y, att, b, n_head, t, t, hs)
    return y, att, _forward(*args, True, window, u, p, rope)


def attention_heads_backward_numba(dy, q, k, v, att, n_head, n_kv_head, cos, sin, keep=None,
                                   p=0.0):  # fmt: skip
    b, t, hs, group, (ql, kl, vl) = _three(q, k, n_head, n_kv_head)
    dq, dk, dv = (np.empty(a.shape, q.dtype) for a in (q, k, v))  # every entry written
    if dq.size:
        rope = None if cos is None else (cos, sin)
        lay = (ql, kl, vl, ql, ql, kl, vl)
        grads = (dq.reshape(-1), dk.reshape(-1), dv.reshape(-1))
        args = (flat(dy), flat(q), flat(k), flat(v), att, lay, grads, b, n_head, t, t, hs)
        _backward(*args, True, keep, p, rope, group)
    return dq, dk, dv
