"""Int8 weight-only quantization: per-output-channel symmetric int8.

For a weight W (out, in), row m gets one float32 scale s[m] = max|W[m]| / 127 and
Wq[m] = round(W[m] / s[m]) in [-127, 127] (symmetric: -128 is never used, so negation is
exact and zero is exactly 0). Rounding to nearest puts every weight within s[m] / 2 of
its dequantized value s[m] * Wq[m]. Activations stay float32; the matmul dequantizes on
the fly (`npllm.kernels.int8`), so a quantized model reads a quarter of the weight bytes.

What is quantized: every Linear weight of the blocks (the names come from the model
description, `npllm.arch`: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj for the GPT-2
family, q/k/v/o_proj and gate/up/down_proj for the Llama one) and, when `embedding=True`,
the token embedding and an untied `lm_head`. A tied embedding's rows are both the
embedding vectors and the output channels of the `lm_head`, so the same per-row scales
serve the lookup and the int8 lm_head matmul. Biases, norms and the position embedding
stay float32: they are a few percent of the bytes.

A quantized state dict keeps every name of the float one but a tied `lm_head.weight`
(one equal to the embedding); a quantized weight `X.weight` is stored as int8 under its
own name, its scales under `X.weight_scale`.

Int4 (`bits=4`): each row of a weight is cut into blocks of `group_size` (32 by default,
64 or 128) consecutive inputs, and each block gets its own float16 scale d:
- symmetric, llama.cpp's Q4_0 rule: d = -(the block's signed extreme) / 8, stored
  q = clip(round(w / d) + 8, 0, 15), value d * (q - 8). The extreme lands exactly on
  -8, so the step is |d| = max|w| / 8 and sixteen levels are used; a weight within
  7.5 |d| is within |d| / 2 of its value, one of the opposite sign beyond that (only
  they can reach q = 16, clipped to 15) within |d|.
- asymmetric, Q4_1's: d = (max - min) / 15, a float16 minimum m, q = clip(round((w - m)
  / d), 0, 15), value d * q + m: every weight within |d| / 2 (plus the float16 rounding
  of d and m), a finer step when a block's weights are not centred on zero.
The scales are float16 because llama.cpp's blocks store them so (a Q4_0 export copies
them bit for bit), and rounding happens against the stored float16 scale, so the bounds
hold for the values the kernels use. Two weights share a byte as in Q4_0: byte j of a
block holds element j in its low nibble and element j + group_size / 2 in its high one.
A state dict stores `X.weight` as uint8 (out, in / 2), `X.weight_scale` and, when
asymmetric, `X.weight_min` as float16 (out, in / group_size). 4.5 bits a weight
symmetric, 5 asymmetric (7.1x / 6.4x smaller than float32 at group 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from npllm import arch
from npllm.errors import CheckpointError, ConfigError, ShapeError

SCALE_SUFFIX = "_scale"
MIN_SUFFIX = "_min"
QMAX = 127
GROUP_SIZES = (32, 64, 128)  # int4 block sizes the CLI offers (any multiple of 32 works)
_FP16_MAX = 65504.0
_HEAD = "lm_head.weight"


def quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: w (M, K) float -> (wq (M, K) int8, scale (M,) float32),
    with |w - scale[:, None] * wq| <= scale[:, None] / 2 elementwise. An all-zero row
    gets scale 0 and zero weights."""
    if w.ndim != 2:
        raise ShapeError(f"quantize needs a 2-D (out, in) weight, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ShapeError("quantize got a weight holding nan or inf; the checkpoint is damaged")
    w32 = np.asarray(w, dtype=np.float32)
    scale = (np.abs(w32).max(axis=1) / np.float32(QMAX)).astype(np.float32)  # (M,)
    safe = np.where(scale > 0, scale, np.float32(1))[:, None]  # (M, 1); zero rows stay 0
    wq = np.clip(np.rint(w32 / safe), -QMAX, QMAX).astype(np.int8)
    return wq, scale


def dequantize(wq: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 weight int8 `wq` (M, K) stands for: scale[:, None] * wq."""
    return wq.astype(np.float32) * scale.astype(np.float32)[:, None]


@dataclass(frozen=True)
class Int8Weight:
    """A quantized (out, in) weight: int8 values and one float32 scale per output row."""

    q: np.ndarray  # (M, K) int8
    scale: np.ndarray  # (M,) float32

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scale.nbytes

    def dequantize(self) -> np.ndarray:
        return dequantize(self.q, self.scale)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Dequantized rows `idx` (an embedding lookup): float32 idx.shape + (K,)."""
        return self.q[idx].astype(np.float32) * self.scale[idx][..., None]


# ---- int4 ------------------------------------------------------------------------------
def _blocks(w: np.ndarray, group_size: int) -> np.ndarray:
    """A float32 weight (M, K) as blocks (M, K / group_size, group_size), checked."""
    if w.ndim != 2:
        raise ShapeError(f"quantize needs a 2-D (out, in) weight, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ShapeError("quantize got a weight holding nan or inf; the checkpoint is damaged")
    g = group_size
    if g < 32 or g % 32 or w.shape[1] % g:
        raise ConfigError(
            f"int4 group size {g} does not cut the weight's {w.shape[1]} inputs into blocks "
            f"of a multiple of 32; pick a group size among {GROUP_SIZES} that divides it"
        )
    return np.asarray(w, np.float32).reshape(w.shape[0], w.shape[1] // g, g)


def _fp16(d: np.ndarray) -> np.ndarray:
    if np.abs(d).max(initial=0) > _FP16_MAX:
        raise ShapeError("int4 scales beyond float16's range: the weights are far too large")
    return d.astype(np.float16)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Codes q (M, nb, g) in [0, 15] -> bytes (M, nb * g / 2): byte j of a block holds
    element j (low nibble) and j + g / 2 (high), llama.cpp's Q4_0 order."""
    h = q.shape[2] // 2
    packed = q[:, :, :h].astype(np.uint8) | (q[:, :, h:].astype(np.uint8) << 4)
    return packed.reshape(q.shape[0], -1)


def unpack_nibbles(packed: np.ndarray, group_size: int) -> np.ndarray:
    """The inverse of `pack_nibbles`: bytes (M, K / 2) -> codes (M, K / g, g) uint8."""
    M = packed.shape[0]
    b = packed.reshape(M, -1, group_size // 2)
    return np.concatenate([b & 15, b >> 4], axis=2)


@dataclass(frozen=True)
class Int4Weight:
    """A 4-bit (out, in) weight: packed codes and float16 scales (and minimums, when
    asymmetric) per block of `group_size` inputs of a row. The value of code q is
    scale * (q - 8) symmetric, scale * q + min asymmetric."""

    q: np.ndarray  # (M, K / 2) uint8, two codes a byte
    scale: np.ndarray  # (M, K / g) float16
    min: np.ndarray | None = None  # (M, K / g) float16, asymmetric only

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[0], 2 * self.q.shape[1]

    @property
    def group_size(self) -> int:
        return self.shape[1] // self.scale.shape[1]

    @property
    def symmetric(self) -> bool:
        return self.min is None

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scale.nbytes + (0 if self.min is None else self.min.nbytes)

    def offsets(self) -> np.ndarray:
        """The per-block term added to scale * q: -8 * scale, or the minimum (float32)."""
        if self.min is None:
            return np.float32(-8) * self.scale.astype(np.float32)
        return self.min.astype(np.float32)

    def dequantize(self) -> np.ndarray:
        return self.rows(slice(None))

    def rows(self, idx) -> np.ndarray:
        """Dequantized rows `idx` (an embedding lookup): float32 idx.shape + (K,)."""
        q = unpack_nibbles(self.q[idx].reshape(-1, self.q.shape[1]), self.group_size)
        s = self.scale[idx].reshape(q.shape[:2]).astype(np.float32)[..., None]
        # the rows' offsets only (a decode step looks up one row of a large table)
        m = -8 * s if self.min is None else self.min[idx].reshape(q.shape[:2])[..., None]
        off = np.asarray(m, np.float32)
        w = q.astype(np.float32) * s + off
        return w.reshape(*np.shape(self.q[idx])[:-1], self.shape[1])


def quantize_int4(w: np.ndarray, group_size: int = 32, symmetric: bool = True) -> Int4Weight:
    """Block-wise 4-bit quantization of w (M, K) (module docstring: the two rules and
    their error bounds). An all-zero block gets scale 0 and dequantizes to zeros."""
    blocks = _blocks(w, group_size)  # (M, nb, g)
    if symmetric:
        idx = np.abs(blocks).argmax(axis=2)[..., None]
        extreme = np.take_along_axis(blocks, idx, axis=2)[..., 0]  # signed, (M, nb)
        d = _fp16(extreme / np.float32(-8))
        d32 = d.astype(np.float32)[..., None]
        safe = np.where(d32 != 0, d32, np.float32(1))
        q = np.clip(np.rint(blocks / safe) + 8, 0, 15)
        return Int4Weight(pack_nibbles(q), d)
    lo, hi = blocks.min(axis=2), blocks.max(axis=2)
    d = _fp16((hi - lo) / np.float32(15))
    m = _fp16(lo)
    d32 = d.astype(np.float32)[..., None]
    safe = np.where(d32 != 0, d32, np.float32(1))
    q = np.clip(np.rint((blocks - m.astype(np.float32)[..., None]) / safe), 0, 15)
    return Int4Weight(pack_nibbles(q), d, m)


def q4_0_blocks(w: np.ndarray) -> np.ndarray:
    """A float32 (rows, cols) matrix, cols a multiple of 32, as llama.cpp's Q4_0 blocks
    (ggml's block_q4_0): uint8 (rows, cols / 32 * 18), each block its float16 scale then
    its 16 bytes of codes. These are the bytes of `quantize_int4(w, 32)` as they are (the
    same rule, scale and nibble order), so a Q4_0 file holds npllm's int4 weights exactly."""
    q4 = quantize_int4(w, 32, symmetric=True)
    rows, nb = q4.scale.shape
    d = q4.scale.astype("<f2").view(np.uint8).reshape(rows, nb, 2)
    out = np.concatenate([d, q4.q.reshape(rows, nb, 16)], axis=2)
    return out.reshape(rows, nb * 18)


def is_quantized_name(name: str, embedding: bool = True) -> bool:
    """Whether `quantize_state_dict` converts the parameter called `name`."""
    return arch.is_block_linear(name) or (embedding and (arch.is_embedding(name) or name == _HEAD))


def quantize_state_dict(
    sd: dict[str, np.ndarray],
    embedding: bool = True,
    bits: int = 8,
    group_size: int = 32,
    symmetric: bool = True,
    embedding_bits: int = 8,
) -> dict[str, np.ndarray]:
    """A float state dict -> the quantized one: each quantized `X.weight` becomes int8
    beside a float32 `X.weight_scale` (bits 8), or packed uint8 codes beside float16
    `X.weight_scale` (and `X.weight_min`) (bits 4); everything else is kept as float32.
    With bits 4 the token embedding and an untied lm_head get `embedding_bits` (8 by
    default: see `npllm quantize`). A tied `lm_head.weight` (equal to the token embedding)
    is dropped; loaders re-tie it."""
    if bits not in (4, 8) or embedding_bits not in (4, 8):
        raise ConfigError(f"bits must be 4 or 8, got {bits} (embedding {embedding_bits})")
    out: dict[str, np.ndarray] = {}
    for name, w in sd.items():
        if name == _HEAD and _tied(sd):
            continue
        if not is_quantized_name(name, embedding):
            out[name] = np.asarray(w, dtype=np.float32)
            continue
        n_bits = bits if arch.is_block_linear(name) else embedding_bits if bits == 4 else 8
        if n_bits == 8:
            out[name], out[name + SCALE_SUFFIX] = quantize(w)
        else:
            q4 = quantize_int4(w, group_size, symmetric)
            out[name], out[name + SCALE_SUFFIX] = q4.q, q4.scale
            if q4.min is not None:
                out[name + MIN_SUFFIX] = q4.min
    return out


def load_weights(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray | Int8Weight | Int4Weight]:
    """A state dict (float, or quantized as `quantize_state_dict` writes it) -> name ->
    float32 array, `Int8Weight` or `Int4Weight`, the form `npllm.decoder.Decoder` runs on."""
    out: dict[str, np.ndarray | Int8Weight | Int4Weight] = {}
    for name, w in sd.items():
        if name.endswith((SCALE_SUFFIX, MIN_SUFFIX)) and name[: name.rindex("_")] in sd:
            continue
        if w.dtype == np.int8:
            scale = sd.get(name + SCALE_SUFFIX)
            if scale is None or scale.shape != (w.shape[0],):
                raise CheckpointError(
                    f"int8 weight {name!r} has no matching {name + SCALE_SUFFIX!r} "
                    f"of shape ({w.shape[0]},); re-create the checkpoint with `npllm quantize`"
                )
            out[name] = Int8Weight(np.ascontiguousarray(w), np.asarray(scale, np.float32))
        elif w.dtype == np.uint8:
            out[name] = _int4_weight(sd, name, w)
        else:
            out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def _int4_weight(sd: dict[str, np.ndarray], name: str, q: np.ndarray) -> Int4Weight:
    scale, mins = sd.get(name + SCALE_SUFFIX), sd.get(name + MIN_SUFFIX)
    ok = q.ndim == 2 and scale is not None and scale.ndim == 2 and scale.dtype == np.float16
    if ok:
        M, K = q.shape[0], 2 * q.shape[1]
        nb = scale.shape[1]
        ok = scale.shape[0] == M and nb > 0 and K % nb == 0 and (K // nb) % 2 == 0
        ok = ok and (mins is None or (mins.shape == scale.shape and mins.dtype == np.float16))
    if not ok:
        raise CheckpointError(
            f"int4 weight {name!r} has no matching float16 {name + SCALE_SUFFIX!r} "
            f"(out, in / group_size); re-create the checkpoint with `npllm quantize --bits 4`"
        )
    return Int4Weight(np.ascontiguousarray(q), np.ascontiguousarray(scale), mins)


def weight_bytes(weights: dict[str, Any], linear_only: bool = False) -> int:
    """Bytes the weights occupy; with `linear_only`, only the names `quantize_state_dict`
    converts (the block Linears and the tied embedding / lm_head)."""
    return sum(
        w.nbytes
        for name, w in weights.items()
        if not (name == _HEAD and _tied(weights)) and (not linear_only or is_quantized_name(name))
    )


def _tied(weights: dict) -> bool:
    """Whether the weights' lm_head is their token embedding (the same array, or equal)."""
    embed = next((w for name, w in weights.items() if arch.is_embedding(name)), None)
    head = weights.get(_HEAD)
    if embed is None or head is None or head is embed:
        return head is embed
    if not isinstance(head, np.ndarray) or not isinstance(embed, np.ndarray):
        return False
    return bool(np.array_equal(head, embed))
