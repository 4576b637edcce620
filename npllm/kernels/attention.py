"""Scaled dot-product attention over (B, nh, T, hs), forward and backward, with an
optional causal mask aligned to the end of the keys: query i of Tq sees keys
j <= i + Tk - Tq, so a KV-cache decoder can call it with Tq = 1 over Tk cached keys.

    attention_forward(q, k, v, causal, window=0) -> (out, att)
        q (B, nh, Tq, hs), k and v (B, nh, Tk, hs); att = softmax(q @ k^T / sqrt(hs) + mask)
        (B, nh, Tq, Tk), out = att @ v (B, nh, Tq, hs); a `window` W > 0 (Mistral's sliding
        window, with causal) also hides keys j <= i + Tk - Tq - W
    attention_backward(dout, q, k, v, att, causal) -> (dq, dk, dv)
        dv = att^T @ dout, datt = dout @ v^T, ds = att * (datt - rowsum(datt * att)),
        dq = ds @ k / sqrt(hs), dk = ds^T @ q / sqrt(hs)

The same kernels serve `attention_packed` (heads read where the linears wrote them, RoPE
and grouped-query attention inside).

The probabilities `att` are all the backward needs besides the inputs (masked entries are
exactly 0, whether hidden by the causal mask or the window; `causal` only lets the
backward skip them). The NumPy reference does the products as batched matmuls, with
transposed operands made contiguous first (NumPy's stacked matmul falls off BLAS onto a
much slower loop when the second operand is a transposed view: docs/performance.md,
"Matmul belongs in BLAS"). The Numba kernel is a fused per-head kernel, described below.
"""

from __future__ import annotations

import math

import numpy as np

from npllm.kernels._jit import fexp, flat, fmax, jit, run, wide_vectors
from npllm.kernels.blas import NO_TRANS, TRANS, gemm_block
from npllm.kernels.rope import turn_rows as _turn

KERNELS = ("attention_forward", "attention_backward")


# ---- NumPy reference -------------------------------------------------------------------
def _t(a: np.ndarray) -> np.ndarray:
    """The last two axes swapped, C-contiguous: keeps np.matmul on its BLAS path."""
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


def attention_forward_numpy(q, k, v, causal=True, window=0):
    tq, tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    s = (q @ _t(k)) * q.dtype.type(1.0 / math.sqrt(hs))  # (B, nh, Tq, Tk)
    if causal:
        mask = np.triu(np.ones((tq, tk), dtype=bool), k=tk - tq + 1)
        if window:
            mask |= np.tril(np.ones((tq, tk), dtype=bool), k=tk - tq - window)
        s[..., mask] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    att = np.exp(s, out=s)
    att /= att.sum(axis=-1, keepdims=True)
    return att @ v, att


def attention_backward_numpy(dout, q, k, v, att, causal=True):
    # out = att @ v, att = softmax(s), s = q @ k^T * scale  =>  dv = att^T @ dout,
    # datt = dout @ v^T, ds = att * (datt - rowsum(datt * att)) (softmax's rule per row),
    # dq = ds @ k * scale, dk = ds^T @ q * scale; masked entries (att = 0) pass nothing
    return _grads(dout, q, k, v, att)


def _grads(dout, q, k, v, att, keep=None, p=0.0):
    """dq, dk, dv; with dropout the product was out = P @ v, P = att * keep / (1 - p), so
    dv = P^T @ dout and datt = (dout @ v^T) * keep / (1 - p)."""
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    sc = q.dtype.type(1.0 / (1.0 - p))
    dv = _t(att if keep is None else att * keep * sc) @ dout
    datt = dout @ _t(v)
    if keep is not None:
        datt *= keep * sc
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    ds *= scale
    return ds @ k, _t(ds) @ q, dv


def _heads(a: np.ndarray, n_head: int) -> np.ndarray:
    """(B, T, C) -> (B, n_head, T, C / n_head), C-contiguous."""
    b, t, c = a.shape
    return np.ascontiguousarray(a.reshape(b, t, n_head, c // n_head).transpose(0, 2, 1, 3))


def _merge(a: np.ndarray) -> np.ndarray:
    """(B, nh, T, hs) -> (B, T, nh * hs), the heads side by side again."""
    b, nh, t, hs = a.shape
    return np.ascontiguousarray(a.transpose(0, 2, 1, 3)).reshape(b, t, nh * hs)


# ---- Numba -----------------------------------------------------------------------------
# Kernels over heads lo..hi (of B*nh), run by `_jit.run` (chunks of heads in parallel).
# The four products of a head go to BLAS (`blas.gemm_block`: a single-threaded GEMM on
# that head's block, inside Numba's pool), and what lies between them is fused in one pass
# over each row: the causal softmax (row i sees keys 0..i+offset; the masked tail is
# written as 0) and, backward, the softmax's Jacobian-vector product.


# The causal softmax runs each row over its visible keys padded out to a multiple of _PAD
# (32) columns, the padding and any keys before a sliding window masked by a select in the
# vector loop (as -inf for the maximum, as 0 after exp). A row of, say, 17 visible keys
# then runs whole vector iterations instead of a scalar remainder loop (LLVM vectorises 32
# floats an iteration; the tail of an uneven row ran scalar, with the scalar exp). The
# maxima of all of a head's rows are taken first, into `m`, so that a row's reduction does
# not hold up its exponentials (softmax.py, `_BLOCK`). Measured on one thread, 48 heads of
# 64x64, Xeon AVX-512: 0.32 -> 0.16 ms; 48 of 128x128: 0.87 -> 0.55.
_PAD = 32


@jit(inline=True)
def _visible(i, tk, offset, window):
    """Row i's visible keys lo..lim, and the padded span lo0..end that holds them."""
    lim = min(tk, i + offset + 1)
    lo = max(0, lim - window) if window > 0 else 0
    return lo, lim, lo - lo % _PAD, min(tk, lim + (-lim) % _PAD)


@jit
def _softmax_causal_rows(s, base, tq, tk, offset, window, m):
    """In place on the (tq, tk) block of the flat array s at `base`: row i becomes zeros,
    softmax(s[i, lo:lim]), zeros, with lim = min(tk, i + offset + 1) and lo = lim - window
    (0 without a window). m (tq,) is scratch for the row maxima."""
    t = s.dtype.type
    ninf = t(-np.inf)
    for i in range(tq):
        lo, lim, lo0, end = _visible(i, tk, offset, window)
        row = s[base + i * tk + lo0 : base + i * tk + end]
        a, b = lo - lo0, lim - lo0
        mx = ninf
        for j in range(row.size):
            mx = fmax(mx, row[j] if (j >= a and j < b) else ninf)
        m[i] = mx
    for i in range(tq):
        lo, lim, lo0, end = _visible(i, tk, offset, window)
        r = base + i * tk
        row = s[r + lo0 : r + end]  # one array for in and out: LLVM then sees no aliasing
        a, b, mx = lo - lo0, lim - lo0, m[i]
        acc = t(0)
        for j in range(row.size):
            e = fexp(row[j] - mx)
            e = e if (j >= a and j < b) else t(0)
            row[j] = e
            acc += e
        rs = t(1) / acc
        for j in range(row.size):
            row[j] *= rs
        for j in range(lo0):
            s[r + j] = t(0)
        for j in range(end, tk):
            s[r + j] = t(0)


# Rows (and, backward, keys) go in blocks of _ROWS: a block's rows see keys up to its last
# row's limit only, so the causal products skip the masked blocks (62% of the work at 128).
_ROWS = 32


# Where a head's rows live: for each of q, k, v, out (forward) and dq, dk, dv (backward)
# a row (start, per batch item, per head, per row, group) of `lay`, in elements of its flat
# array. Head h of B*nh (batch item h // nh, head h % nh) reads the rows of head
# (h % nh) // group, which start at start + (h // nh) * per batch item + that head *
# per head and are `per row` apart; group is n_head / n_kv_head for k, v, dk, dv under
# grouped-query attention, else 1. Heads stored apart, (B, nh, T, hs), have
# (0, nh*T*hs, T*hs, hs, 1); heads side by side in a linear's output (B, T, width), from
# column c on, have (c, T*width, hs, width, 1): the kernels then read q, k, v where the
# linears wrote them and write the gradients the same way, with no copies either side.
Q, K, V, O, DQ, DK, DV = range(7)


@jit(inline=True)
def _at(lay, r, h, nh):
    """(offset of head h's first row, distance between its rows) in layout row r."""
    return lay[r, 0] + (h // nh) * lay[r, 1] + ((h % nh) // lay[r, 4]) * lay[r, 2], lay[r, 3]


@jit
def _transpose_head(k, ko, ldk, tk, hs, kt):
    """kt (hs, tk), flat = the tk rows of hs values at ko, ldk apart in k, transposed."""
    for j in range(tk):
        for d in range(hs):
            kt[d * tk + j] = k[ko + j * ldk + d]


@jit
def _dropped(att, ao, keep, p, n, pd):
    """pd[:n] = att[ao:ao + n] * keep / (1 - p): a head's probabilities after dropout."""
    t = att.dtype.type
    sc = t(1) / (t(1) - p)
    for j in range(n):
        pd[j] = att[ao + j] * sc if keep[ao + j] else t(0)


@jit
def _attn_fwd(
    q, k, v, lay, cos, sin, scale, offset, window, u, p, keep, out, att, nh, tq, tk, hs, lo, hi
):
    """q, k, v, out flat, their heads where `lay` says; att (heads*tq*tk,) flat.
    att = softmax(q k^T * scale + mask), out = att v; with dropout (p > 0; u, keep flat like
    att) out = (att * keep / (1 - p)) v, keep = u >= p; with RoPE tables (cos, sin not
    empty) q and k turned first (query i at position i + tk - tq). The scores are q @ kt,
    kt = k^T made first: OpenBLAS's small GEMMs with a transposed second operand ran at
    50-90 GFLOP/s here, plain ones at 130-150 (Xeon, 32-128 wide): cpu-small 0.43 -> 0.39
    ms on one thread, guppy 2.17 -> 1.93."""
    m = np.empty(tq, q.dtype)
    kt = np.empty(tk * hs, q.dtype)
    pd = np.empty(tq * tk if p > 0 else 0, q.dtype)
    rope = cos.shape[0] > 0
    qr, kr = np.empty(tq * hs if rope else 0, q.dtype), np.empty(tk * hs if rope else 0, q.dtype)
    one = q.dtype.type(1)
    for h in range(lo, hi):
        qo, ldq = _at(lay, Q, h, nh)
        ko, ldk = _at(lay, K, h, nh)
        vo, ldv = _at(lay, V, h, nh)
        oo, ldo = _at(lay, O, h, nh)
        ao = h * tq * tk
        qs = q
        if rope:
            _turn(q, qo, ldq, qr, 0, hs, tq, hs, cos, sin, one, tk - tq)
            _turn(k, ko, ldk, kr, 0, hs, tk, hs, cos, sin, one, 0)
            _transpose_head(kr, 0, hs, tk, hs, kt)
            qs, qo, ldq = qr, 0, hs
        else:
            _transpose_head(k, ko, ldk, tk, hs, kt)
        for r0 in range(0, tq, _ROWS):  # scores of the keys each block of rows can see
            n, kend = min(_ROWS, tq - r0), min(tk, min(tq, r0 + _ROWS) + offset)
            a, c = qo + r0 * ldq, ao + r0 * tk
            gemm_block(NO_TRANS, NO_TRANS, n, kend, hs, scale, qs, a, ldq, kt, 0, tk, 0.0, att, c,
                       tk)  # fmt: skip
        _softmax_causal_rows(att, ao, tq, tk, offset, window, m)
        src, so = att, ao
        if p > 0:
            for j in range(ao, ao + tq * tk):
                keep[j] = u[j] >= p
            _dropped(att, ao, keep, p, tq * tk, pd)
            src, so = pd, 0
        for r0 in range(0, tq, _ROWS):  # out = P @ v over the same keys
            n, kend = min(_ROWS, tq - r0), min(tk, min(tq, r0 + _ROWS) + offset)
            a, c = so + r0 * tk, oo + r0 * ldo
            gemm_block(NO_TRANS, NO_TRANS, n, hs, kend, 1.0, src, a, tk, v, vo, ldv, 0.0, out, c,
                       ldo)  # fmt: skip


@jit
def _attn_bwd(
    dout, q, k, v, att, keep, p, lay, cos, sin, scale, offset, dq, dk, dv, ds, nh, group, tq,
    tk, hs, lo, hi
):  # fmt: skip
    """Flat like _attn_fwd (dout where `lay` says for out); ds (heads*tq*tk,) is scratch
    for the score gradients. With dropout (p > 0) the products saw P = att * keep / (1 - p).
    Tasks lo..hi are k/v heads (of B * nh / group): each does its group's query heads, and
    adds their dk, dv up (beta 1 after the first), so no two tasks write the same rows."""
    wide_vectors()
    t = q.dtype.type
    pd = np.empty(tq * tk if p > 0 else 0, q.dtype)
    sc = t(1) / (t(1) - p)
    rope = cos.shape[0] > 0
    qr, dqr = np.empty(tq * hs if rope else 0, q.dtype), np.empty(tq * hs if rope else 0, q.dtype)
    kr, dkr = np.empty(tk * hs if rope else 0, q.dtype), np.empty(tk * hs if rope else 0, q.dtype)
    nkv = nh // group
    for task in range(lo, hi):
        for r in range(group):
            h = (task // nkv) * nh + (task % nkv) * group + r
            beta = 0.0 if r == 0 else 1.0
            qo, ldq = _at(lay, Q, h, nh)
            ko, ldk = _at(lay, K, h, nh)
            vo, ldv = _at(lay, V, h, nh)
            go, ldg = _at(lay, O, h, nh)  # dout where out was
            dqo, lddq = _at(lay, DQ, h, nh)
            dko, lddk = _at(lay, DK, h, nh)
            dvo, lddv = _at(lay, DV, h, nh)
            ao = h * tq * tk
            # under RoPE the scores saw turned q, k: their gradients are taken in that
            # frame (dq into dqr, dk summed in dkr) and turned back (sign -1) below
            qs, ks, dqs, dks = q, k, dq, dk
            if rope:
                _turn(q, qo, ldq, qr, 0, hs, tq, hs, cos, sin, t(1), tk - tq)
                _turn(k, ko, ldk, kr, 0, hs, tk, hs, cos, sin, t(1), 0)
                qs, qo, ldq, ks, ko, ldk = qr, 0, hs, kr, 0, hs
                dqs, dqo, lddq, dks, dko, lddk = dqr, 0, hs, dkr, 0, hs
            # out = P @ v  =>  dP = dout @ v^T, for each block of rows over the keys it sees
            for r0 in range(0, tq, _ROWS):
                n, kend = min(_ROWS, tq - r0), min(tk, min(tq, r0 + _ROWS) + offset)
                a, c = go + r0 * ldg, ao + r0 * tk
                gemm_block(NO_TRANS, TRANS, n, kend, hs, 1.0, dout, a, ldg, v, vo, ldv, 0.0, ds,
                           c, tk)  # fmt: skip
            # P = att * keep / (1 - p)  =>  datt = dP * keep / (1 - p); att = softmax(s)  =>
            # ds = att * (datt - rowsum(datt * att)), times the score scale
            for i in range(tq):
                lim = min(tk, i + offset + 1)
                row = ao + i * tk
                if p > 0:
                    for j in range(lim):
                        ds[row + j] = ds[row + j] * sc if keep[row + j] else t(0)
                acc = t(0)
                for j in range(lim):
                    acc += ds[row + j] * att[row + j]
                for j in range(lim):
                    ds[row + j] = att[row + j] * (ds[row + j] - acc) * scale
                for j in range(lim, tk):
                    ds[row + j] = t(0)
            # s = q @ k^T  =>  dq = ds @ k (rows over the keys they see)
            for r0 in range(0, tq, _ROWS):
                n, kend = min(_ROWS, tq - r0), min(tk, min(tq, r0 + _ROWS) + offset)
                a, c = ao + r0 * tk, dqo + r0 * lddq
                gemm_block(NO_TRANS, NO_TRANS, n, hs, kend, 1.0, ds, a, tk, ks, ko, ldk, 0.0,
                           dqs, c, lddq)  # fmt: skip
            if rope:  # q' = R q  =>  dq = R^T dq'
                dqo, lddq = _at(lay, DQ, h, nh)
                _turn(dqr, 0, hs, dq, dqo, lddq, tq, hs, cos, sin, t(-1), tk - tq)
            # dv = P^T @ dout and dk = ds^T @ q, each block of keys over the rows that see
            # it (key j is seen from row j - offset on)
            src, so = att, ao
            if p > 0:
                _dropped(att, ao, keep, p, tq * tk, pd)
                src, so = pd, 0
            for j0 in range(0, tk, _ROWS):
                m, i0 = min(_ROWS, tk - j0), min(tq, max(0, j0 - offset))
                a, n = i0 * tk + j0, tq - i0
                gemm_block(TRANS, NO_TRANS, m, hs, n, 1.0, src, so + a, tk, dout, go + i0 * ldg,
                           ldg, beta, dv, dvo + j0 * lddv, lddv)  # fmt: skip
                gemm_block(TRANS, NO_TRANS, m, hs, n, 1.0, ds, ao + a, tk, qs, qo + i0 * ldq, ldq,
                           beta, dks, dko + j0 * lddk, lddk)  # fmt: skip
        if rope:  # k' = R k  =>  dk = R^T dk', once the group's sum is complete
            dko, lddk = _at(lay, DK, h, nh)
            _turn(dkr, 0, hs, dk, dko, lddk, tk, hs, cos, sin, t(-1), 0)


def _apart(nh: int, t: int, hs: int) -> tuple:  # heads stored apart, (B, nh, t, hs)
    return (0, nh * t * hs, t * hs, hs, 1)


def _side_by_side(col: int, t: int, hs: int, width: int, group: int = 1) -> tuple:
    """The layout row of heads side by side from column col of (B, t, width)."""
    return (col, t * width, hs, width, group)


def _tables(rope, dt):
    """RoPE's (cos, sin) as the kernels take them: empty tables for no RoPE (None)."""
    if rope is None:
        return np.empty((0, 0), dt), np.empty((0, 0), dt)
    return tuple(np.ascontiguousarray(a, dt) for a in rope)


def _forward(q, k, v, lay, out, att, b, nh, tq, tk, hs, causal, window, u=None, p=0.0, rope=None):
    """Runs _attn_fwd; returns keep (the kept probabilities, bool like att) with dropout.
    `rope`: the (cos, sin) tables, or None."""
    offset = tk - tq if causal else tk
    scale = 1.0 / math.sqrt(hs)
    win = window if causal else 0
    lay = np.array(lay, dtype=np.int64)
    keep = np.empty(att.size if p > 0 else 0, np.bool_)
    u = flat(u) if p > 0 else np.empty(0, q.dtype)
    cos, sin = _tables(rope, q.dtype)
    args = (q, k, v, lay, cos, sin, scale, offset, win, u, q.dtype.type(p), keep)
    args = (*args, out.reshape(-1), att.reshape(-1), nh, tq, tk, hs)
    run(_attn_fwd, args, b * nh, 2 * att.size * hs)
    return keep.reshape(att.shape) if p > 0 else None


def _backward(dout, q, k, v, att, lay, grads, b, nh, tq, tk, hs, causal, keep=None, p=0.0,
              rope=None, group=1):  # fmt: skip
    offset = tk - tq if causal else tk  # masked att entries are 0; rows stop at the mask
    ds = np.empty(b * nh * tq * tk, dtype=q.dtype)
    t = q.dtype.type
    scale = t(1.0 / math.sqrt(hs))
    lay = np.array(lay, dtype=np.int64)
    keep = flat(keep) if p > 0 else np.empty(0, np.bool_)
    cos, sin = _tables(rope, q.dtype)
    args = (dout, q, k, v, flat(att), keep, t(p), lay, cos, sin, scale, offset, *grads, ds)
    run(_attn_bwd, (*args, nh, group, tq, tk, hs), b * nh // group, 4 * att.size * hs)


def attention_forward_numba(q, k, v, causal=True, window=0):
    b, nh, tq, hs = q.shape
    tk = k.shape[-2]
    out = np.empty((b, nh, tq, hs), dtype=q.dtype)
    att = np.empty((b, nh, tq, tk), dtype=q.dtype)
    if out.size and att.size:
        qo, kv = _apart(nh, tq, hs), _apart(nh, tk, hs)
        lay = (qo, kv, kv, qo)
        _forward(flat(q), flat(k), flat(v), lay, out, att, b, nh, tq, tk, hs, causal, window)
    elif out.size:
        out[...] = 0
    return out, att


def attention_backward_numba(dout, q, k, v, att, causal=True):
    b, nh, tq, hs = q.shape
    tk = k.shape[-2]
    dq, dk, dv = (np.empty(s, q.dtype) for s in (q.shape, k.shape, k.shape))  # C order
    if dq.size and att.size:
        qo, kv = _apart(nh, tq, hs), _apart(nh, tk, hs)
        lay = (qo, kv, kv, qo, qo, kv, kv)
        grads = (dq.reshape(-1), dk.reshape(-1), dv.reshape(-1))
        args = (flat(dout), flat(q), flat(k), flat(v), att, lay, grads)
        _backward(*args, b, nh, tq, tk, hs, causal)
    else:
        for g in (dq, dk, dv):
            g[...] = 0
    return dq, dk, dv
