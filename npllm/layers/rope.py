"""RoPE's frequencies and angle tables, with the scalings transformers defines
(`modeling_rope_utils`), for `GPTConfig(pos_embedding="rope", rope_theta, rope_scaling)`.

    inv_freq[d] = theta ** (-2d / hs), d < hs/2; position p turns pair d by p * inv_freq[d]

`rope_scaling` is transformers' dict ("rope_type", or the older "type"):
- None or {"rope_type": "default"}: as above.
- "linear" {"factor": f}: inv_freq / f (positions interpolated f times).
- "dynamic" {"factor": f, "original_max_position_embeddings": M (default block_size)}:
  NTK-aware, theta * (f * L / M - (f - 1)) ** (hs / (hs - 2)) for a length L > M.
  transformers recomputes it for each sequence length L; npllm fixes L = block_size, the
  longest sequence the model runs, so that a cached key keeps its rotation. For sequences
  of block_size tokens the two agree.
- "yarn" {"factor": f, "original_max_position_embeddings": M, "beta_fast": 32,
  "beta_slow": 1, "attention_factor", "mscale", "mscale_all_dim", "truncate": True}:
  per-pair blend of the interpolated and the original frequency along a linear ramp
  between the correction dims of beta_fast and beta_slow, and cos/sin multiplied by the
  attention factor (0.1 ln f + 1 by default).

Tables are computed in float64 and cast where they are used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from npllm.errors import ConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "yarn")


def rope_type(scaling: dict | None) -> str:
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


def check_rope_scaling(scaling: Any) -> None:
    """One clear error for a rope_scaling that npllm cannot run."""
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        raise ConfigError(
            f"GPTConfig.rope_scaling must be None or a dict like transformers' "
            f'{{"rope_type": "linear", "factor": 2.0}}, got {scaling!r}'
        )
    kind = rope_type(scaling)
    if kind not in ROPE_TYPES:
        raise ConfigError(
            f"rope_scaling type {kind!r} is not supported; use one of {', '.join(ROPE_TYPES)}"
        )
    if kind != "default":
        factor = scaling.get("factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor < 1:
            raise ConfigError(f"rope_scaling {kind!r} needs a factor >= 1, got {factor!r}")


def inv_freq(head_size: int, theta: float, scaling: dict | None, block_size: int):
    """(inv_freq (head_size/2,) float64, attention factor) for a config's RoPE."""
    kind = rope_type(scaling)
    dim = head_size
    exps = np.arange(0, dim, 2, dtype=np.float64) / dim
    if kind == "default":
        return theta**-exps, 1.0
    factor = float(scaling["factor"])
    original = int(scaling.get("original_max_position_embeddings") or block_size)
    if kind == "linear":
        return theta**-exps / factor, 1.0
    if kind == "dynamic":
        length = max(block_size, original)
        base = theta * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
        return base**-exps, 1.0

    # yarn
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = scaling.get("attention_factor")
    if attention is None:
        ms, ms_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = mscale(factor, ms) / mscale(factor, ms_all) if ms and ms_all else mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: no division by zero
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: the original frequency (fast pairs), 0: interpolated (slow pairs)
    freq = theta**-exps
    return freq / factor * (1 - keep) + freq * keep, float(attention)


def rope_tables(positions: np.ndarray, freqs: np.ndarray, attention: float = 1.0):
    """cos and sin (len(positions), head_size/2) of positions * freqs, times the factor."""
    angles = np.asarray(positions, np.float64)[:, None] * freqs[None, :]
    return np.cos(angles) * attention, np.sin(angles) * attention


def config_rope(config: Any) -> tuple[np.ndarray, float]:
    """`inv_freq` of a GPTConfig with pos_embedding="rope"."""
    hs = config.n_embd // config.n_head
    return inv_freq(hs, config.rope_theta, config.rope_scaling, config.block_size)
