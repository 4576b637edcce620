"""Int4 linear layer: y = x @ dequant(W).T + b, with W in npllm.quant's 4-bit blocks,
dequantized in registers (no float copy of W is made for a matrix-vector product).

    int4_linear(x, w, s, b) -> y
        x (N, K) float32; w (ceil(M / 16), K / 8, 64) uint8: npllm.quant's packed codes
        (byte j of a block of g holds its element j low, j + g / 2 high) in tiles of 16
        outputs: word j (4 bytes) of output 16 t + l is w[t, j, 4 l : 4 l + 4], so that a
        tile's words come as vectors of 16 outputs (`kernel_layout`); s (2, K / g, M)
        float32: the blocks' scales, then their offsets (the minimum, asymmetric), or for
        symmetric blocks s (1, K / g, M), the scales only (offsets -8 * scale); b (M,)
        float32 or None
        y[n, m] = sum over blocks c of  s[0, c, m] * (x_c . codes_c[m]) + s[1, c, m] * sum(x_c)

Below `TILE_MIN_ROWS` rows (decode steps, small batches) the activations are quantized
too, as llama.cpp's Q4_0 x Q8_0 product does: per row and block of g inputs, xq = round(x /
dx) in int8 with dx = max|x_c| / 127 (`quantize_rows`), and the products are summed in
int32 (`npllm.kernels.int4_dot`: VNNI or pmaddubsw/pmaddwd on x86), then
    y[n, m] = sum_c  s[0, c, m] * dx_c * (xq_c . codes_c[m]) + s[1, c, m] * dx_c * sum(xq_c)
which is exactly the product with the dequantized activations xhat = dx * xq; the error
against float x is at most sum_c dx_c / 2 * sum_k |W[m, k]| over the block c of k
(tests/quant/test_int4_kernels.py). From `TILE_MIN_ROWS` rows (prompts) x stays float.

Kernels:
- `quantize_rows(x, nb, xq, dx, sq)`: the activations' int8 blocks (`quantize_rows_numpy`).
- `q4_matmul(xq, dx, sq, w, s, b, out, lo, hi)`: tiles lo..hi of 16 outputs on quantized
  rows, whole tiles by `int4_dot.int4_tile`, the last partial one here (decode steps:
  npllm/kernels/decode.py calls `prepared_matmul`, which runs it serially or on chunks of
  tiles through `_jit`'s parallel driver).
- `_tiles`: larger batches (prompts) dequantize a tile of outputs into a small
  per-chunk buffer and multiply it by BLAS (`blas.gemm_block`), chunks of tiles in
  parallel (`_jit.run`, one chunk per thread): one tile, never the whole matrix, is ever
  in float.
`int4_linear_numpy` is the reference (it dequantizes the whole matrix, and quantizes x
below `TILE_MIN_ROWS` rows as the kernel does); `kernels.int4_linear` is the one the
backend switch makes active.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads

from npllm.errors import ShapeError
from npllm.kernels._jit import (
    MOST_CHUNKS,
    PAR_MIN,
    _int32_bits_as_float32,
    chunk_of,
    in_kernels,
    jit,
    parallel,
    per_chunk,
    run,
)
from npllm.kernels.blas import NO_TRANS, gemm_block
from npllm.kernels.int4_dot import LANES, int4_dequant, int4_tile

KERNELS = ("int4_linear",)

# From this many input rows a product dequantizes tiles and calls BLAS: from here BLAS's
# blocking beats reading every code once per row.
TILE_MIN_ROWS = 8
_TILE = 64  # outputs a BLAS tile holds: K x 64 floats (96 KB at K = 384) stay in L2
_LANES = LANES  # outputs a register tile holds (the layout's tiles)
_CHUNK_MIN = 4  # register tiles a parallel task takes at least


def kernel_layout(q: np.ndarray, scale: np.ndarray, offset: np.ndarray):
    """npllm.quant's (M, K / 2) codes and (M, K / g) scales / offsets -> the kernels'
    (w (ceil(M / 16), K / 8, 64) uint8, s (2, K / g, M) float32); a last partial tile is
    padded with zero codes. Symmetric blocks (offset = -8 scale) keep their scales only:
    s (1, K / g, M), a sixth fewer bytes a product reads."""
    m, h = q.shape
    tiles = -(-m // _LANES)
    padded = np.zeros((tiles * _LANES, h), np.uint8)
    padded[:m] = q
    w = padded.reshape(tiles, _LANES, h // 4, 4).transpose(0, 2, 1, 3).reshape(tiles, h // 4, -1)
    scale, offset = np.asarray(scale, np.float32), np.asarray(offset, np.float32)
    s = (
        scale.T[None]
        if np.array_equal(offset, np.float32(-8) * scale)
        else np.stack([scale.T, offset.T])
    )
    return np.ascontiguousarray(w), np.ascontiguousarray(s)


def _check(x, w, s, b) -> None:
    if x.ndim != 2 or w.ndim != 3 or w.shape[2] != 4 * _LANES or x.shape[1] != 8 * w.shape[1]:
        raise ShapeError(
            f"int4_linear needs x (N, K) and packed codes w (M / 16, K / 8, 64) "
            f"(npllm.kernels.int4.kernel_layout), got x {x.shape} and w {w.shape}"
        )
    if w.dtype != np.uint8:
        raise ShapeError(f"int4_linear needs uint8 packed codes, got {w.dtype}; quantize first")
    M, K = s.shape[-1], x.shape[1]
    if s.ndim != 3 or s.shape[0] not in (1, 2) or not s.shape[1] or K % (32 * s.shape[1]):
        raise ShapeError(
            f"int4_linear needs scales (2 or 1, K / group, M) with a group size that is a "
            f"multiple of 32, got {s.shape} for K = {K}"
        )
    if -(-M // _LANES) != w.shape[0]:
        raise ShapeError(f"int4_linear: {w.shape[0]} tiles of codes for {M} outputs")
    if b is not None and b.shape != (M,):
        raise ShapeError(f"int4_linear needs a bias of shape ({M},), got {b.shape}")


# ---- NumPy reference -------------------------------------------------------------------
def dequantize_numpy(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The float32 (M, K) matrix that w (tiles, K / 8, 64) and s (2, nb, M) stand for."""
    nb, M = s.shape[1], s.shape[2]
    tiles, words = w.shape[:2]
    q = w.reshape(tiles, words, _LANES, 4).transpose(0, 2, 1, 3).reshape(tiles * _LANES, -1)
    blocks = q[:M].reshape(M, nb, -1)  # (M, nb, g / 2)
    codes = np.concatenate([blocks & 15, blocks >> 4], axis=2).astype(np.float32)
    off = s[1] if s.shape[0] == 2 else np.float32(-8) * s[0]
    return (codes * s[0].T[..., None] + off.T[..., None]).reshape(M, -1)


def quantize_rows_numpy(x: np.ndarray, nb: int):
    """x (N, K) float32 -> xq (N, K) int8, dx (N, nb) its blocks' scales, sq (N, nb) the
    blocks' sums of dx * xq: xq = rint(x * (127 / max |x_c|)) (halves to even), dx =
    max |x_c| / 127; a block holding a NaN or inf gets codes 0 and dx = sq = NaN."""
    n, k = x.shape
    xb = x.reshape(n, nb, -1).astype(np.float32)
    mx = np.abs(xb).max(axis=2)
    safe = np.where(mx > 0, mx, 1).astype(np.float32)
    inv = np.where(mx > 0, np.float32(127) / safe, 0).astype(np.float32)
    with np.errstate(invalid="ignore"):  # NaN / inf blocks: made NaN below
        xq = np.rint(xb * inv[..., None]).astype(np.int8)
        dx = (mx / np.float32(127)).astype(np.float32)
        sq = (dx * xq.sum(axis=2, dtype=np.int32)).astype(np.float32)
    bad = ~np.isfinite(mx)
    xq[bad], dx[bad], sq[bad] = 0, np.nan, np.nan
    return xq.reshape(n, k), dx, sq


def int4_linear_numpy(x, w, s, b=None):
    _check(x, w, s, b)
    if x.shape[0] < TILE_MIN_ROWS:  # the kernel's int8 activations: x as they dequantize
        xq, dx, _ = quantize_rows_numpy(x, s.shape[1])
        x = (xq.reshape(*dx.shape, -1) * dx[..., None]).reshape(x.shape).astype(np.float32)
    y = x @ dequantize_numpy(w, s).T
    if b is not None:
        y += b
    return y


# ---- Numba -----------------------------------------------------------------------------
@jit(fastmath=False)
def quantize_rows(x, nb, xq, dx, sq):
    """`quantize_rows_numpy` into xq (N, K) int8, dx, sq (N, nb) float32. Without
    fastmath: its divisions and products are then IEEE's, as NumPy's, so both make the
    same codes (a reciprocal or a fused add could move a value across a rounding edge).
    A NaN or inf (all exponent bits set) makes its block's scale NaN, so the outputs are
    NaN rather than finite numbers."""
    n, k = x.shape
    g = k // nb
    for i in range(n):
        bits = x[i].view(np.int32)
        for c in range(nb):
            xc, qc, bc = x[i, c * g : (c + 1) * g], xq[i, c * g : (c + 1) * g], bits[c * g :]
            top = np.int32(0)  # the largest |x| as bits: positive floats order as their bits
            for j in range(g):
                top = max(top, bc[j] & np.int32(0x7FFFFFFF))
            if top >= np.int32(0x7F800000):  # inf or NaN
                qc[:] = 0
                dx[i, c] = sq[i, c] = np.nan
                continue
            mx = _int32_bits_as_float32(np.int32(top))
            inv = np.float32(127) / mx if mx > 0 else np.float32(0)
            t = 0
            for j in range(g):
                v = np.int32(np.rint(xc[j] * inv))
                qc[j] = v
                t += v
            dx[i, c] = mx / np.float32(127)
            sq[i, c] = dx[i, c] * np.float32(t)


@jit(inline=True)
def _partial_tile(xq, dx, sq, w, s, b, out, i, t):
    """out[i, 16 t:] of a last tile with fewer than 16 outputs, as `int4_tile` sums it."""
    nb = s.shape[1]
    wpb = w.shape[1] // nb
    g = 8 * wpb
    r0 = t * _LANES
    for lane in range(out.shape[1] - r0):
        y = np.float32(0)
        for c in range(nb):
            acc = 0
            for q in range(wpb):
                for u in range(4):
                    v = np.int32(w[t, c * wpb + q, 4 * lane + u])
                    e = c * g + 4 * q + u
                    acc += (v & 15) * np.int32(xq[i, e]) + (v >> 4) * np.int32(xq[i, e + g // 2])
            sc = s[0, c, r0 + lane]
            off = s[1, c, r0 + lane] if s.shape[0] == 2 else np.float32(-8) * sc
            y += sc * (dx[i, c] * np.float32(acc)) + off * sq[i, c]
        out[i, r0 + lane] = y + b[r0 + lane]


@jit
def q4_matmul(xq, dx, sq, w, s, b, out, lo, hi):
    """Tiles lo..hi of 16 outputs of out (N, M) = xhat @ dequant(w, s).T + b, on rows
    quantized by `quantize_rows` (each tile read once for all N rows)."""
    wpb = w.shape[1] // s.shape[1]
    full = out.shape[1] // _LANES
    for t in range(lo, hi):
        for i in range(out.shape[0]):
            if t < full:
                int4_tile(w, xq[i], dx[i], sq[i], s, b, out[i], t, wpb)
            else:
                _partial_tile(xq, dx, sq, w, s, b, out, i, t)


_q4_chunks = parallel(q4_matmul)


@jit
def prepared_matmul(x, w, s, b, out, in_parallel):
    """out = x @ dequant(w, s).T + b through the register kernel on int8 activations
    (quantizes x itself); in parallel: up to 8 chunks of at least 4 tiles."""
    n, k = x.shape
    nb = s.shape[1]
    xq = np.empty((n, k), np.int8)
    dx = np.empty((n, nb), np.float32)
    sq = np.empty((n, nb), np.float32)
    quantize_rows(x, nb, xq, dx, sq)
    tiles = w.shape[0]
    args = (xq, dx, sq, w, s, b, out)
    if in_parallel:
        _q4_chunks(args, tiles, min(MOST_CHUNKS, max(1, tiles // _CHUNK_MIN)))
    else:
        q4_matmul(*args, 0, tiles)


# for the decode step (npllm.kernels.decode), which calls it from inside a cached kernel
prepared_matmul_in_kernels = in_kernels(
    prepared_matmul, _q4_chunks=parallel(q4_matmul, cache=False)
)


@jit(inline=True)
def _dequant_tile(w, w32, s, r0, r1, wt):
    """wt[:, : r1 - r0] (K, _TILE) = the float columns r0..r1 of W.T (a BLAS tile; r0 is
    a multiple of 16): whole register tiles by `int4_dot.int4_dequant`, a last partial
    one here from w32, the codes as (tiles, K / 8, 16) uint32 words."""
    nb = s.shape[1]
    wpb = w32.shape[1] // nb
    h = 4 * wpb  # bytes a block
    for r in range(r0, r1, _LANES):
        t, n = r // _LANES, min(_LANES, r1 - r)
        if n == _LANES:
            int4_dequant(w, s, wt, t, r - r0, wpb)
            continue
        for c in range(nb):
            sc = s[0, c, r : r + n]
            off = s[1, c, r : r + n] if s.shape[0] == 2 else np.float32(-8) * sc
            for q in range(wpb):
                word = w32[t, c * wpb + q]
                for u in range(4):  # byte u of each output's word: elements 4 q + u, + g / 2
                    k = 2 * c * h + 4 * q + u
                    lo, hi = wt[k, r - r0 : r - r0 + n], wt[k + h, r - r0 : r - r0 + n]
                    for lane in range(n):
                        v = np.int32(word[lane] >> np.uint32(8 * u))
                        lo[lane] = np.float32(v & 15) * sc[lane] + off[lane]
                        hi[lane] = np.float32((v >> 4) & 15) * sc[lane] + off[lane]


@jit
def _tiles(x, w, w32, s, b, out, buffers, lo, hi):
    """Tiles lo..hi of _TILE outputs of out = x @ dequant(w, s).T + b (w32: w's words):
    each dequantized
    into this chunk's buffer (K, _TILE) of `buffers` in turn and multiplied by BLAS into
    the tile's columns of out."""
    n, k = x.shape
    m = s.shape[2]
    wt = buffers[chunk_of(lo, (m + _TILE - 1) // _TILE, buffers.shape[0])]
    for tile in range(lo, hi):
        r0 = tile * _TILE
        r1 = min(m, r0 + _TILE)
        _dequant_tile(w, w32, s, r0, r1, wt)
        # out[:, r0:r1] = x @ wt[:, : r1 - r0]
        gemm_block(NO_TRANS, NO_TRANS, n, r1 - r0, k, 1.0, x, 0, k, wt, 0, _TILE, 0.0, out, r0, m)
        for i in range(n):
            for r in range(r0, r1):
                out[i, r] += b[r]


def int4_linear_numba(x, w, s, b=None):
    _check(x, w, s, b)
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w)
    s = np.ascontiguousarray(s, dtype=np.float32)
    m = s.shape[2]
    b_ = np.zeros(m, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    out = np.empty((x.shape[0], m), np.float32)
    if not out.size:
        return out
    work = out.size * x.shape[1]  # multiply-adds
    if x.shape[0] >= TILE_MIN_ROWS:
        tiles, threads = -(-m // _TILE), get_num_threads()
        buffers = per_chunk(tiles, work, (x.shape[1], _TILE), np.float32, threads)
        w32 = w.view(np.uint32).reshape(w.shape[0], w.shape[1], _LANES)
        run(_tiles, (x, w, w32, s, b_, out, buffers), tiles, work, threads)
    else:
        prepared_matmul(x, w, s, b_, out, work >= PAR_MIN)
    return out
