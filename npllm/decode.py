"""The fused decode step: one transformer block for one new token per row, as one Numba
call, and the final LayerNorm + lm_head as another. The hot loop of `npllm.generate`.

Why fused: at batch 1 a decode step is ~30 small array operations per block, each paying
~1-3 us of dispatch in NumPy or PyTorch eager (PERF_NOTES: ~0.7 ms a token for 4 layers in
torch), while the arithmetic of a cpu-small block is ~0.4 MFLOP. One compiled call per
block removes that overhead; what remains is reading the weights once per token.

    decode_block(x, pos, p, k_cache, v_cache, act, par_min)   x (B, C) updated in place
        h = ln_1(x); q, k, v = split(h @ W_attn.T + b); cache[:, :, pos] = k, v
        per head: a = softmax(q . K[:pos+1] / sqrt(hs)); y = a @ V[:pos+1]
        x += y @ W_proj.T + b; x += act(ln_2(x) @ W_fc.T + b) @ W_mlp_proj.T + b
    decode_head(x, ln_w, ln_b, w_lm, s_lm, b_lm, par_min) -> logits (B, V)

Every matrix-vector product goes through `npllm.kernels.int8`'s scaled matmul,
y = scale * (x . w_row) + b, which takes int8 weights with their per-row scales or float32
weights with scales of one: the same code serves both models. Products over at least
`par_min` weights x rows run in parallel over output rows; each output is summed by one
thread in the same order either way, so the choice never changes a bit of the result
(`npllm.generate.Decoder` picks it by timing both). The NumPy reference is
`npllm.generate.Decoder.forward` (tested against this in tests/generate).
"""

from __future__ import annotations

import math

import numpy as np

from npllm.kernels._jit import ferf, fexp, jit
from npllm.kernels.int8 import scaled_matmul, scaled_matmul_parallel

ACTIVATIONS = {"gelu": 0, "gelu_exact": 1, "relu": 2}

# The two settings of `par_min`. PARALLEL: products from 128K weights x rows (guppy's, not
# cpu-small's) use both cores. Whether that pays depends on the machine's mood: with
# OMP_WAIT_POLICY=passive (npllm's import sets it, PERF_NOTES) every prange launch wakes a
# sleeping thread, and with the other core busy a guppy c_attn product took 52 us in
# parallel against 37 us serial (with active waiting: 2.8 ms); on an idle machine two cores
# stream the weights from memory faster than one.
SERIAL = 1 << 62
PARALLEL = 1 << 17


@jit
def _matvec(x, w, s, b, out, par_min):
    if w.size * x.shape[0] >= par_min:
        scaled_matmul_parallel(x, w, s, b, out)
    else:
        scaled_matmul(x, w, s, b, out)


@jit
def _layernorm(x, w, b, out):
    B, C = x.shape
    t = x.dtype.type
    for i in range(B):
        m = t(0)
        for c in range(C):
            m += x[i, c]
        m /= t(C)
        v = t(0)
        for c in range(C):
            d = x[i, c] - m
            v += d * d
        r = t(1) / np.sqrt(v / t(C) + t(1e-5))
        for c in range(C):
            out[i, c] = (x[i, c] - m) * r * w[c] + b[c]


@jit
def _activate(h, act):
    # one loop per activation, the branch outside: a branch inside stops vectorisation
    t = h.dtype.type
    half, one = t(0.5), t(1)
    k, c3, s2 = t(math.sqrt(2 / math.pi)), t(0.044715), t(1 / math.sqrt(2))
    f = h.reshape(-1)
    if act == 0:  # GELU, tanh approximation: tanh(u) = sign(u) (1 - e) / (1 + e)
        for i in range(f.size):
            v = f[i]
            u = k * (v + c3 * v * v * v)
            e = fexp(t(-2) * abs(u))  # in (0, 1]: no overflow
            th = (one - e) / (one + e)
            f[i] = half * v * (one + (th if u >= t(0) else -th))
    elif act == 1:  # GELU, erf
        for i in range(f.size):
            f[i] = half * f[i] * (one + ferf(f[i] * s2))
    else:
        for i in range(f.size):
            f[i] = max(f[i], t(0))


@jit
def _attend(qkv, pos, k_cache, v_cache, y):
    """Write this token's k, v into the caches at `pos`; y = attention of q over [0, pos]."""
    B, nh, _, hs = k_cache.shape
    C = nh * hs
    t = qkv.dtype.type
    scale = t(1) / np.sqrt(t(hs))
    S = pos + 1
    att = np.empty(S, qkv.dtype)
    for b in range(B):
        for h in range(nh):
            q0, k0, v0 = h * hs, C + h * hs, 2 * C + h * hs
            for d in range(hs):
                k_cache[b, h, pos, d] = qkv[b, k0 + d]
                v_cache[b, h, pos, d] = qkv[b, v0 + d]
            kc, vc = k_cache[b, h], v_cache[b, h]  # (block_size, hs)
            m = t(-np.inf)
            for s in range(S):
                a = t(0)
                for d in range(hs):
                    a += qkv[b, q0 + d] * kc[s, d]
                att[s] = a * scale
                m = max(m, att[s])
            z = t(0)
            for s in range(S):
                att[s] = fexp(att[s] - m)
                z += att[s]
            for d in range(hs):
                y[b, q0 + d] = t(0)
            for s in range(S):
                p = att[s] / z
                for d in range(hs):
                    y[b, q0 + d] += p * vc[s, d]


@jit
def decode_block(
    x,
    pos,
    ln1_w,
    ln1_b,
    w_attn,
    s_attn,
    b_attn,
    w_proj,
    s_proj,
    b_proj,
    ln2_w,
    ln2_b,
    w_fc,
    s_fc,
    b_fc,
    w_mlp,
    s_mlp,
    b_mlp,
    k_cache,
    v_cache,
    act,
    par_min,
):
    B, C = x.shape
    dt = x.dtype
    h = np.empty((B, C), dt)
    _layernorm(x, ln1_w, ln1_b, h)
    qkv = np.empty((B, w_attn.shape[0]), dt)
    _matvec(h, w_attn, s_attn, b_attn, qkv, par_min)
    y = np.empty((B, C), dt)
    _attend(qkv, pos, k_cache, v_cache, y)
    _matvec(y, w_proj, s_proj, b_proj, h, par_min)
    x += h
    _layernorm(x, ln2_w, ln2_b, h)
    f = np.empty((B, w_fc.shape[0]), dt)
    _matvec(h, w_fc, s_fc, b_fc, f, par_min)
    _activate(f, act)
    _matvec(f, w_mlp, s_mlp, b_mlp, h, par_min)
    x += h


@jit
def decode_head(x, ln_w, ln_b, w_lm, s_lm, b_lm, par_min):
    h = np.empty_like(x)
    _layernorm(x, ln_w, ln_b, h)
    logits = np.empty((x.shape[0], w_lm.shape[0]), x.dtype)
    _matvec(h, w_lm, s_lm, b_lm, logits, par_min)
    return logits
