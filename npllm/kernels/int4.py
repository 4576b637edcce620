"""Int4 linear layer: y = x @ dequant(W).T + b, with W in npllm.quant's 4-bit blocks,
dequantized in registers (no float copy of W is made for a matrix-vector product).

    int4_linear(x, qt, s, b) -> y
        x (N, K) float32; qt (K / 2, M) uint8: the packed codes of npllm.quant (byte j of
        a block of g holds its element j low, j + g / 2 high) transposed, so that row
        c * g / 2 + j of qt is byte j of block c of every output; s (2, K / g, M) float32:
        the blocks' scales, then their offsets (-8 * scale symmetric, the minimum
        asymmetric); b (M,) float32 or None
        y[n, m] = sum over blocks c of  s[0, c, m] * (x_c . codes_c[m]) + s[1, c, m] * sum(x_c)

Why transposed. A block's scale multiplies the dot product of its 32 codes with x, so a
kernel that runs along a row of W (as the int8 one does) must reduce every 32 products
to one number before scaling: a horizontal sum every 32 weights, and loops of 16 bytes
that LLVM does not vectorise well (5-10x slower than int8, measured). Along a column
instead (all outputs at once, one byte row of qt at a time) the scale is a vector over
outputs like the codes, nothing is reduced, and the inner loop runs over M contiguous
bytes: y[m] accumulates x[k] * code[k, m] for four k at a time into a per-block sum
(M floats, in L1), which is scaled into y once per block (`_columns`).

Splitting a byte into its codes takes integer ops that Numba widens to 64 bits (half the
vector width); instead the kernel reads the byte v as a float (v = lo + 16 hi) and uses
    x_lo * lo + x_hi * hi = x_lo * v + (x_hi - 16 x_lo) * floor(v / 16)
with x_lo and x_hi - 16 x_lo rearranged once per product (`_prepare`): per byte one
conversion, one multiply, one floor and two FMAs, in 32-bit lanes.

Kernels:
- `q4_matmul(xl, xd, sx, qt, s, b, out, acc, lo, hi)`: the register kernel on prepared
  inputs, for matrix-vector products and small batches, over outputs 16 * lo..16 * hi
  (decode steps: npllm/kernels/decode.py calls `prepared_matmul`, which runs it serially
  or on chunks of at least 128 outputs through `_jit`'s parallel driver).
- `_tiles`: larger batches (prompts) dequantize a tile of outputs into a small
  per-chunk buffer and multiply it by BLAS (`blas.gemm_block`), chunks of tiles in
  parallel (`_jit.run`, one chunk per thread): one tile, never the whole matrix, is ever
  in float.
`int4_linear_numpy` is the reference (it dequantizes the whole matrix);
`kernels.int4_linear` is the one the backend switch makes active.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads

from npllm.errors import ShapeError
from npllm.kernels._jit import (
    MOST_CHUNKS,
    PAR_MIN,
    chunk_of,
    in_kernels,
    jit,
    parallel,
    per_chunk,
    run,
)
from npllm.kernels.blas import NO_TRANS, gemm_block

KERNELS = ("int4_linear",)

_F16 = np.float32(1 / 16)
# From this many input rows a product dequantizes tiles and calls BLAS: from here BLAS's
# blocking beats reading every code once per row.
TILE_MIN_ROWS = 8
_TILE = 64  # outputs a tile holds: K x 64 floats (96 KB at K = 384) stay in L2
_VEC = 16  # the register kernel's outputs come in units of whole vectors
_CHUNK_MIN = 128  # and a parallel task takes at least this many


def kernel_layout(q: np.ndarray, scale: np.ndarray, offset: np.ndarray):
    """npllm.quant's (M, K / 2) codes and (M, K / g) scales / offsets -> the kernels'
    (qt (K / 2, M), s (2, K / g, M) float32)."""
    s = np.stack([np.asarray(scale, np.float32).T, np.asarray(offset, np.float32).T])
    return np.ascontiguousarray(q.T), np.ascontiguousarray(s)


def _check(x, qt, s, b) -> None:
    if x.ndim != 2 or qt.ndim != 2 or x.shape[1] != 2 * qt.shape[0]:
        raise ShapeError(
            f"int4_linear needs x (N, K) and packed codes qt (K / 2, M), got x {x.shape} "
            f"and qt {qt.shape}"
        )
    if qt.dtype != np.uint8:
        raise ShapeError(f"int4_linear needs uint8 packed codes, got {qt.dtype}; quantize first")
    M, K = qt.shape[1], x.shape[1]
    if s.ndim != 3 or s.shape[0] != 2 or s.shape[2] != M or not s.shape[1] or K % (32 * s.shape[1]):
        raise ShapeError(
            f"int4_linear needs scales (2, K / group, {M}) with a group size that is a "
            f"multiple of 32, got {s.shape} for K = {K}"
        )
    if b is not None and b.shape != (M,):
        raise ShapeError(f"int4_linear needs a bias of shape ({M},), got {b.shape}")


# ---- NumPy reference -------------------------------------------------------------------
def dequantize_numpy(qt: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The float32 (M, K) matrix that qt (K / 2, M) and s (2, nb, M) stand for."""
    nb, M = s.shape[1], s.shape[2]
    blocks = qt.T.reshape(M, nb, -1)  # (M, nb, g / 2)
    codes = np.concatenate([blocks & 15, blocks >> 4], axis=2).astype(np.float32)
    return (codes * s[0].T[..., None] + s[1].T[..., None]).reshape(M, -1)


def int4_linear_numpy(x, qt, s, b=None):
    _check(x, qt, s, b)
    y = x @ dequantize_numpy(qt, s).T
    if b is not None:
        y += b
    return y


# ---- Numba -----------------------------------------------------------------------------
@jit
def _prepare(x, nb, xl, xd, sx):
    """Per row of x (N, K) and block c of g = K / nb inputs: xl = its first g / 2 inputs
    (the low codes' partners), xd = its last g / 2 minus 16 times the first, sx = the
    block's sum; xl, xd (N, K / 2), sx (N, nb)."""
    n, k = x.shape
    g = k // nb
    h = g // 2
    for i in range(n):
        for c in range(nb):
            lo, hi = x[i, c * g : c * g + h], x[i, c * g + h : (c + 1) * g]
            a, d = xl[i, c * h : (c + 1) * h], xd[i, c * h : (c + 1) * h]
            t = np.float32(0)
            for j in range(h):
                a[j] = lo[j]
                d[j] = hi[j] - np.float32(16) * lo[j]
                t += lo[j] + hi[j]
            sx[i, c] = t


@jit(inline=True)
def _columns(xl, xd, sx, qt, s, b, out, acc, i, r0, r1):
    """out[i, r0:r1] for input row i: per block, four byte rows of qt at a time into the
    block's sums acc[r0:r1], then scaled and offset into out."""
    nb = s.shape[1]
    h = qt.shape[0] // nb  # bytes a block (a multiple of 16)
    n = r1 - r0
    o, a, bias = out[i, r0:r1], acc[r0:r1], b[r0:r1]
    xli, xdi = xl[i], xd[i]
    for r in range(n):
        o[r] = bias[r]
    for c in range(nb):
        for r in range(n):
            a[r] = 0
        for j in range(c * h, (c + 1) * h, 4):
            l0, l1, l2, l3 = xli[j], xli[j + 1], xli[j + 2], xli[j + 3]
            d0, d1, d2, d3 = xdi[j], xdi[j + 1], xdi[j + 2], xdi[j + 3]
            q0, q1 = qt[j, r0:r1], qt[j + 1, r0:r1]
            q2, q3 = qt[j + 2, r0:r1], qt[j + 3, r0:r1]
            for r in range(n):
                v0 = np.float32(q0[r])
                v1 = np.float32(q1[r])
                v2 = np.float32(q2[r])
                v3 = np.float32(q3[r])
                a[r] += (
                    (l0 * v0 + d0 * np.floor(v0 * _F16))
                    + (l1 * v1 + d1 * np.floor(v1 * _F16))
                    + (l2 * v2 + d2 * np.floor(v2 * _F16))
                    + (l3 * v3 + d3 * np.floor(v3 * _F16))
                )
        sc, off, t = s[0, c, r0:r1], s[1, c, r0:r1], sx[i, c]
        for r in range(n):
            o[r] += sc[r] * a[r] + off[r] * t


@jit
def q4_matmul(xl, xd, sx, qt, s, b, out, acc, lo, hi):
    """out[:, 16 lo : 16 hi] of out (N, M) = x @ dequant(qt, s).T + b on prepared x
    (`_prepare`), with acc (M,) float32 scratch (each call its own outputs' part)."""
    r0, r1 = lo * _VEC, min(out.shape[1], hi * _VEC)
    for i in range(out.shape[0]):
        _columns(xl, xd, sx, qt, s, b, out, acc, i, r0, r1)


_q4_chunks = parallel(q4_matmul)


@jit
def prepared_matmul(x, qt, s, b, out, in_parallel):
    """out = x @ dequant(qt, s).T + b through the register kernel (prepares x itself);
    in parallel: up to 8 chunks of at least 128 outputs, in whole vectors."""
    n, k = x.shape
    nb = s.shape[1]
    m = qt.shape[1]
    xl = np.empty((n, k // 2), np.float32)
    xd = np.empty((n, k // 2), np.float32)
    sx = np.empty((n, nb), np.float32)
    acc = np.empty(m, np.float32)
    _prepare(x, nb, xl, xd, sx)
    units = (m + _VEC - 1) // _VEC
    args = (xl, xd, sx, qt, s, b, out, acc)
    if in_parallel:
        _q4_chunks(args, units, min(MOST_CHUNKS, max(1, m // _CHUNK_MIN), units))
    else:
        q4_matmul(*args, 0, units)


# for the decode step (npllm.kernels.decode), which calls it from inside a cached kernel
prepared_matmul_in_kernels = in_kernels(
    prepared_matmul, _q4_chunks=parallel(q4_matmul, cache=False)
)


@jit(inline=True)
def _dequant_tile(qt, s, r0, r1, wt):
    """wt[:, : r1 - r0] (K, _TILE) = the float columns r0..r1 of W.T (a tile)."""
    nb = s.shape[1]
    h = qt.shape[0] // nb
    n = r1 - r0
    for c in range(nb):
        sc, off = s[0, c, r0:r1], s[1, c, r0:r1]
        for j in range(h):
            qj = qt[c * h + j, r0:r1]
            lo, hi = wt[2 * c * h + j], wt[2 * c * h + h + j]
            for r in range(n):
                v = np.float32(qj[r])
                u = np.floor(v * _F16)
                lo[r] = (v - np.float32(16) * u) * sc[r] + off[r]
                hi[r] = u * sc[r] + off[r]


@jit
def _tiles(x, qt, s, b, out, buffers, lo, hi):
    """Tiles lo..hi of _TILE outputs of out = x @ dequant(qt, s).T + b: each dequantized
    into this chunk's buffer (K, _TILE) of `buffers` in turn and multiplied by BLAS into
    the tile's columns of out."""
    n, k = x.shape
    m = qt.shape[1]
    wt = buffers[chunk_of(lo, (m + _TILE - 1) // _TILE, buffers.shape[0])]
    for tile in range(lo, hi):
        r0 = tile * _TILE
        r1 = min(m, r0 + _TILE)
        _dequant_tile(qt, s, r0, r1, wt)
        # out[:, r0:r1] = x @ wt[:, : r1 - r0]
        gemm_block(NO_TRANS, NO_TRANS, n, r1 - r0, k, 1.0, x, 0, k, wt, 0, _TILE, 0.0, out, r0, m)
        for i in range(n):
            for r in range(r0, r1):
                out[i, r] += b[r]


def int4_linear_numba(x, qt, s, b=None):
    _check(x, qt, s, b)
    x = np.ascontiguousarray(x, dtype=np.float32)
    qt = np.ascontiguousarray(qt)
    s = np.ascontiguousarray(s, dtype=np.float32)
    b_ = np.zeros(qt.shape[1], np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    out = np.empty((x.shape[0], qt.shape[1]), np.float32)
    if not out.size:
        return out
    work = out.size * x.shape[1]  # multiply-adds
    if x.shape[0] >= TILE_MIN_ROWS:
        tiles, threads = -(-qt.shape[1] // _TILE), get_num_threads()
        buffers = per_chunk(tiles, work, (x.shape[1], _TILE), np.float32, threads)
        run(_tiles, (x, qt, s, b_, out, buffers), tiles, work, threads)
    else:
        prepared_matmul(x, qt, s, b_, out, work >= PAR_MIN)
    return out
