"""The fused decode step: one transformer block for one new token per row, as one Numba
call, and the final norm + lm_head as another. The hot loop of `npllm.generate`.

Why fused: at batch 1 a decode step is ~30 small array operations per block, each paying
microseconds of dispatch in NumPy or PyTorch eager, while the arithmetic of a cpu-small
block is ~0.4 MFLOP (docs/performance.md, "Dispatch cost"). One compiled call per
block removes that overhead; what remains is reading the weights once per token.

    decode_block(x, pos, w, k_cache, v_cache, cos, sin, spec, par_min)
        x (B, C) updated in place; pos (B,) int64, each row's position (rows may stand at
        different positions: the server's continuous batching, npllm/serve/engine.py);
        cos, sin (B, hs/2) RoPE's tables at each row's pos (if spec.rope)
        h = norm_1(x); q, k, v = split(h @ W_qkv.T + b); q, k = rope(q, k)
        cache[b, :, pos[b]] = k[b], v[b]
        per head: a = softmax(q . K[:pos+1] / sqrt(hs)); y = a @ V[:pos+1]
        x += y @ W_out.T + b; x += act(norm_2(x) @ W_up.T + b) @ W_down.T + b
    decode_head(x, w, spec, par_min) -> logits (B, V)

`w` holds the fields of an `npllm.arch.BlockWeights` (`HeadWeights` for the head) and
`spec` those of an `npllm.arch.Spec`: the model description, so this file knows no
parameter names. Callers pass them as plain tuples, which the kernels turn back into the
NamedTuples: Numba types a plain tuple of arrays in its C fast path but a NamedTuple in
Python, twice as slow a call (docs/performance.md, "Dispatch cost"). Each
piece is the serial kernel its family's training op runs (`kernels.layernorm._ln_fwd`,
`kernels.softmax._softmax_rows`, the activations' loops), not a copy of it.

Every matrix-vector product goes through `npllm.kernels._jit.scaled_matmul`,
y = scale * (x . w_row) + b, which takes int8 weights with their per-row scales or float32
weights with scales of one: the same code serves both models; int4 weights (uint8 codes)
go through `npllm.kernels.int4`'s register kernel instead, picked by type at compile
time. Products over at least `par_min` weights x rows run in parallel over output rows;
each output is summed by one thread in the same order either way, so the choice never
changes a bit of the result (`npllm.decoder.Decoder` picks it by timing both). The NumPy
reference is `npllm.decoder.Decoder.forward` under `kernels.use("numpy")` (tests/generate).
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from npllm.arch import BlockWeights, HeadWeights, Spec
from npllm.kernels._jit import MOST_CHUNKS, jit, parallel, prefetch, scaled_matmul
from npllm.kernels.activations import _gelu_erf_fwd, _gelu_tanh_fwd, _relu_fwd
from npllm.kernels.blas import NO_TRANS, TRANS, gemm_block
from npllm.kernels.int4 import prepared_matmul_in_kernels
from npllm.kernels.layernorm import _ln_fwd
from npllm.kernels.rmsnorm import _rms_fwd
from npllm.kernels.rope import rope_rows
from npllm.kernels.softmax import _softmax_rows
from npllm.kernels.swiglu import _swiglu_fwd

# The two settings of `par_min`. PARALLEL: products from 128K weights x rows (guppy's, not
# cpu-small's) use both cores. Whether that pays depends on the machine's mood: with the
# other core busy a parallel product waits for a thread that is not running; on an idle
# machine two cores stream the weights from memory faster than one (docs/performance.md,
# "Dispatch cost"). The decoder times both and keeps the faster.
SERIAL = 1 << 62
PARALLEL = 1 << 17


# float32 products go to BLAS (`kernels.blas.gemm_block`): one single-threaded sgemm per
# block of GEMM_COLS outputs and at most GEMM_ROWS rows. At 16 rows that is ~1.7-2x the
# register-blocked `scaled_matmul` (guppy's products: 190-260 GFLOP/s on both cores
# against 100-125 on the Xeon), and no slower at one row. The server promises that a
# seeded request gives the same tokens whatever else runs, so a row must be summed alike
# in any batch: OpenBLAS's sgemm (0.3.34, SkylakeX) gives a row the same bits whatever the
# other rows for blocks of 64 outputs and up to 18 rows, but not from 19 rows on, nor for
# widths that are not a multiple of 8, nor past ~768 inputs (beyond its block of the sum,
# a call of 16 rows sums in stretches and one of 1 row in one go: different bits at
# K = 1024). Hence fixed blocks of 64 outputs, 16 rows and 384 inputs (the later
# stretches added in with beta = 1; 384 rather than 256: guppy's 16-row step 5-10% faster,
# its K = 384 products in one stretch), and the outputs past the last whole block through
# `scaled_matmul`, whose sums never depend on the other rows (tests/serve/
# test_step_rows.py checks a row alone against a batch, with 1,024 inputs).
GEMM_COLS = 64
GEMM_ROWS = 16
GEMM_DEPTH = 384
# Weights smaller than this keep `scaled_matmul` at every batch size: a BLAS call per 64
# outputs cost more than it saved there (llama-small's decode, C = 128: 6,859 -> 5,408
# tok/s at one row through BLAS; Xeon). guppy's smallest product has 147,456.
GEMM_MIN_WEIGHTS = 1 << 17


@jit
def _gemm_cols(x, w, s, b, out, lo, hi):
    """out = (x @ w.T) * s + b over the units lo..hi of ceil(M / 64): unit u < M // 64
    is the outputs 64u..64u+63 by BLAS, GEMM_ROWS rows of x a call; the last, when M is
    not a multiple of 64, the rest by `scaled_matmul`. x (N, K), w (M, K), out (N, M)
    float32, C-contiguous."""
    n, k = x.shape
    m = w.shape[0]
    whole = m // GEMM_COLS
    for u in range(lo, hi):
        j0 = u * GEMM_COLS
        if u == whole:  # the leftover outputs, in scaled_matmul's blocks of four
            scaled_matmul(x, w, s, b, out, j0 // 4, m // 4 + 1)
            continue
        for i0 in range(0, n, GEMM_ROWS):
            i1 = min(n, i0 + GEMM_ROWS)
            rows, cols, c0 = i1 - i0, GEMM_COLS, i0 * m + j0
            for k0 in range(0, k, GEMM_DEPTH):  # the sum in fixed stretches of the inputs
                kk, beta = min(GEMM_DEPTH, k - k0), 0.0 if k0 == 0 else 1.0
                gemm_block(NO_TRANS, TRANS, rows, cols, kk, 1.0, x, i0 * k + k0, k, w,
                           j0 * k + k0, k, beta, out, c0, m)  # fmt: skip
            for i in range(i0, i1):
                for j in range(j0, j0 + GEMM_COLS):
                    out[i, j] = out[i, j] * s[j] + b[j]


# uncached copies of the parallel products, for use inside the step (see _jit.in_kernels)
_scaled_matmul_chunks = parallel(scaled_matmul, cache=False)
_gemm_cols_chunks = parallel(_gemm_cols, cache=False)


@jit(inline=True, cache=False)  # inlined where a step is compiled, as the drivers it calls
def _scaled_product(x, w, s, b, out, par_min):
    """out = (x @ w.T) * s + b by `_jit.scaled_matmul`, on both cores when big enough."""
    blocks = w.shape[0] // 4 + 1  # _jit.scaled_matmul's units: 4 outputs, then the rest
    if w.size * x.shape[0] >= par_min:
        _scaled_matmul_chunks((x, w, s, b, out), blocks, min(blocks, MOST_CHUNKS))
    else:
        scaled_matmul(x, w, s, b, out, 0, blocks)


def _matvec(x, w, s, b, out, par_min):
    """out = x @ W.T + b for the weight (w, s) of a record, in Numba code only: int8 or
    float32 rows with per-row scales, or int4 codes with per-block scales and offsets."""
    raise NotImplementedError("_matvec is callable from Numba kernels only")


@overload(_matvec)
def _matvec_impl(x, w, s, b, out, par_min):
    # chosen by the weight's type when a decode step is compiled: one step serves all
    if w.dtype == types.uint8:

        def int4(x, w, s, b, out, par_min):
            prepared_matmul_in_kernels(x, w, s, b, out, 2 * w.size * x.shape[0] >= par_min)

        return int4

    def scaled(x, w, s, b, out, par_min):
        _scaled_product(x, w, s, b, out, par_min)

    contiguous = x.layout == "C" and w.layout == "C" and out.layout == "C"
    if w.dtype == types.float32 and x.dtype == types.float32 and contiguous:

        def blas(x, w, s, b, out, par_min):
            if w.size < GEMM_MIN_WEIGHTS:  # by the weight alone: a row's sums never
                _scaled_product(x, w, s, b, out, par_min)  # depend on the batch it is in
                return
            units = (w.shape[0] + GEMM_COLS - 1) // GEMM_COLS
            if w.size * x.shape[0] >= par_min:
                _gemm_cols_chunks((x, w, s, b, out), units, min(units, MOST_CHUNKS))
            else:
                _gemm_cols(x, w, s, b, out, 0, units)

        return blas

    return scaled


@jit
def _norm(x, w, b, spec, out, stats):
    """out = norm(x) over rows; stats (2, B) scratch for the per-row statistics."""
    t = x.dtype.type
    if spec.norm == 0:
        _ln_fwd(x, w, b, t(spec.eps), out, stats[0], stats[1], 0, x.shape[0])
    else:
        _rms_fwd(x, w, t(spec.eps), out, stats[0], 0, x.shape[0])


@jit
def _activate(f, spec, out):
    """out (B, hidden) = the MLP's activation of f (B, hidden), or for SwiGLU of f
    (B, 2 hidden) = [gate, up]. Out of place: with the input and output one array the
    loops stayed scalar."""
    a, o = f.reshape(-1), out.reshape(-1)
    if spec.act == 3:
        H = out.shape[1]
        for b in range(f.shape[0]):
            _swiglu_fwd(f[b, :H], f[b, H:], out[b], 0, H)
    elif spec.act == 0:
        _gelu_tanh_fwd(a, o, 0, o.size)
    elif spec.act == 1:
        _gelu_erf_fwd(a, o, 0, o.size)
    else:
        _relu_fwd(a, o, 0, o.size)


# How far ahead `_attend` asks for keys and values (cache rows): a head's are a few KB, a
# stream too short for the hardware prefetcher to reach full speed. 16 rows ahead: the
# guppy step's attention at 16 rows, position 100, 1.55 -> 1.14 ms, the whole step 4.73 ->
# 2.94 ms (Intel Xeon; docs/performance.md, "Memory the hardware prefetcher does not see
# coming").
AHEAD = 16


@jit(inline=True, cache=False)
def _ask_ahead(cache, at, s, S, hs, line):
    """Prefetch cache row s + AHEAD of the (S, hs) rows that start at flat index `at`."""
    if s + AHEAD < S:
        for d in range(0, hs, line):
            prefetch(cache, at + (s + AHEAD) * hs + d)


@jit
def _attend(qkv, pos, k_cache, v_cache, cos, sin, y, nh, window, rope, b0, b1):
    """Rows b0..b1: rotate each row's q and k (RoPE, by row b of the (B, hs/2) tables cos,
    sin), write its k, v into the caches at pos[b]; y = attention of q over [0, pos[b]]
    (the last `window` of it). Query head h reads key/value head h // (n_head / n_kv_head).
    Each row is computed by one thread, so running rows in parallel changes no bit. The
    spec's fields come as scalars (n_head, window, rope): a parallel driver's arguments
    cannot hold a NamedTuple."""
    n_kv, slots, hs = k_cache.shape[1:]
    rep = nh // n_kv
    t = qkv.dtype.type
    scale = t(1) / np.sqrt(t(hs))
    k0, v0 = nh * hs, (nh + n_kv) * hs
    line = 64 // k_cache.itemsize  # elements a cache line
    for b in range(b0, b1):
        p_b = pos[b]
        slot = p_b % slots  # a rolling cache (npllm.generate) keeps position p in slot p % slots
        if p_b < slots:
            lo = max(0, p_b + 1 - window) if window else 0
            S = p_b + 1 - lo
        else:  # the cache holds exactly the window, in ring order: attend to all of it
            lo, S = 0, slots
        if rope:
            for h in range(nh + n_kv):  # q heads, then k heads: contiguous in qkv
                head = qkv[b : b + 1, h * hs : (h + 1) * hs]
                rope_rows(head, cos[b : b + 1], sin[b : b + 1], t(1), head)
        scores = np.empty((2, S), qkv.dtype)
        att, p = scores[:1], scores[1:]  # softmax out of place: in place stays scalar
        for g in range(n_kv):
            for d in range(hs):
                k_cache[b, g, slot, d] = qkv[b, k0 + g * hs + d]
                v_cache[b, g, slot, d] = qkv[b, v0 + g * hs + d]
        for h in range(nh):
            q0 = h * hs
            kc, vc = k_cache[b, h // rep, lo:], v_cache[b, h // rep, lo:]  # (>= S, hs)
            at = ((b * n_kv + h // rep) * slots + lo) * hs  # kc[0, 0] in the flat cache
            for s in range(S):
                _ask_ahead(k_cache, at, s, S, hs, line)  # on their way meanwhile
                a = t(0)
                for d in range(hs):
                    a += qkv[b, q0 + d] * kc[s, d]
                att[0, s] = a * scale
            _softmax_rows(att, p, 0, 1)
            for d in range(hs):
                y[b, q0 + d] = t(0)
            for s in range(S):
                _ask_ahead(v_cache, at, s, S, hs, line)
                ps = p[0, s]
                for d in range(hs):
                    y[b, q0 + d] += ps * vc[s, d]


_attend_chunks = parallel(_attend, cache=False)  # uncached, as _scaled_matmul_chunks


@jit(nogil=True)
def decode_block(x, pos, w, k_cache, v_cache, cos, sin, spec, par_min):
    w, spec = BlockWeights(*w), Spec(*spec)
    B, C = x.shape
    dt = x.dtype
    h = np.empty((B, C), dt)
    stats = np.empty((2, B), dt)
    _norm(x, w.norm_1_w, w.norm_1_b, spec, h, stats)
    qkv = np.empty((B, w.qkv_s.shape[-1]), dt)
    _matvec(h, w.qkv_w, w.qkv_s, w.qkv_b, qkv, par_min)
    hs = k_cache.shape[3]
    y = np.empty((B, spec.n_head * hs), dt)
    # the server's batches (npllm/serve/engine.py): rows' attention on both cores too, when
    # all rows' scores and sums (n_head x positions x hs each) are as much work as a product
    if B > 1 and B * spec.n_head * (pos.max() + 1) * hs >= par_min:
        args = (qkv, pos, k_cache, v_cache, cos, sin, y, spec.n_head, spec.window, spec.rope)
        _attend_chunks(args, B, min(B, MOST_CHUNKS))
    else:
        _attend(qkv, pos, k_cache, v_cache, cos, sin, y, spec.n_head, spec.window, spec.rope, 0, B)
    _matvec(y, w.out_w, w.out_s, w.out_b, h, par_min)
    x += h
    _norm(x, w.norm_2_w, w.norm_2_b, spec, h, stats)
    f = np.empty((B, w.up_s.shape[-1]), dt)
    _matvec(h, w.up_w, w.up_s, w.up_b, f, par_min)
    hidden = w.up_s.shape[-1] // 2 if spec.act == 3 else w.up_s.shape[-1]  # SwiGLU: gate, up
    g = np.empty((B, hidden), dt)
    _activate(f, spec, g)
    _matvec(g, w.down_w, w.down_s, w.down_b, h, par_min)
    x += h


@jit(nogil=True)
def decode_head(x, w, spec, par_min):
    w, spec = HeadWeights(*w), Spec(*spec)
    h = np.empty_like(x)
    _norm(x, w.norm_w, w.norm_b, spec, h, np.empty((2, x.shape[0]), x.dtype))
    logits = np.empty((x.shape[0], w.s.shape[-1]), x.dtype)
    _matvec(h, w.w, w.s, w.b, logits, par_min)
    return logits


@jit(fastmath=False, nogil=True)
def cumsum_rows(p, out):
    """out[b, i] = p[b, 0] + ... + p[b, i] in float64, added one at a time from the left:
    np.cumsum(p, axis=-1, dtype=np.float64) to the bit (strict IEEE, no fastmath), for
    `npllm.sampling.sample`'s inverse CDF. NumPy runs each row's sum as one chain of
    dependent adds; here four rows' sums run side by side in registers."""
    B, V = p.shape
    b = 0
    while b + 4 <= B:
        a0 = a1 = a2 = a3 = 0.0
        for i in range(V):
            a0 += np.float64(p[b, i])
            a1 += np.float64(p[b + 1, i])
            a2 += np.float64(p[b + 2, i])
            a3 += np.float64(p[b + 3, i])
            out[b, i] = a0
            out[b + 1, i] = a1
            out[b + 2, i] = a2
            out[b + 3, i] = a3
        b += 4
    for r in range(b, B):
        a = 0.0
        for i in range(V):
            a += np.float64(p[r, i])
            out[r, i] = a
