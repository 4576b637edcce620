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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npllm import arch
from npllm.errors import CheckpointError, ShapeError

SCALE_SUFFIX = "_scale"
QMAX = 127
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


def is_quantized_name(name: str, embedding: bool = True) -> bool:
    """Whether `quantize_state_dict` converts the parameter called `name`."""
    return arch.is_block_linear(name) or (embedding and (arch.is_embedding(name) or name == _HEAD))


def quantize_state_dict(sd: dict[str, np.ndarray], embedding: bool = True) -> dict[str, np.ndarray]:
    """A float state dict -> the int8 one: each quantized `X.weight` becomes int8 beside
    a float32 `X.weight_scale`; everything else is kept as float32. A tied `lm_head.weight`
    (equal to the token embedding) is dropped; loaders re-tie it."""
    out: dict[str, np.ndarray] = {}
    for name, w in sd.items():
        if name == _HEAD and _tied(sd):
            continue
        if is_quantized_name(name, embedding):
            out[name], out[name + SCALE_SUFFIX] = quantize(w)
        else:
            out[name] = np.asarray(w, dtype=np.float32)
    return out


def load_weights(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray | Int8Weight]:
    """A state dict (float, or int8 as `quantize_state_dict` writes it) -> name -> float32
    array or `Int8Weight`, the form `npllm.generate.Decoder` runs on."""
    out: dict[str, np.ndarray | Int8Weight] = {}
    for name, w in sd.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if w.dtype == np.int8:
            scale = sd.get(name + SCALE_SUFFIX)
            if scale is None or scale.shape != (w.shape[0],):
                raise CheckpointError(
                    f"int8 weight {name!r} has no matching {name + SCALE_SUFFIX!r} "
                    f"of shape ({w.shape[0]},); re-create the checkpoint with `npllm quantize`"
                )
            out[name] = Int8Weight(np.ascontiguousarray(w), np.asarray(scale, np.float32))
        else:
            out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def weight_bytes(weights: dict[str, np.ndarray | Int8Weight], linear_only: bool = False) -> int:
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
    if isinstance(head, Int8Weight) or isinstance(embed, Int8Weight):
        return False
    return bool(np.array_equal(head, embed))
