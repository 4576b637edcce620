"""Samplers: turn a row of next-token logits into a token id.

The order is the one Hugging Face's `generate` uses: repetition penalty -> temperature ->
top-k -> top-p -> softmax -> draw, after the grammar's mask (`npllm.constrain`), if any,
has set the logits of disallowed tokens to -inf, so every rule then works among the
allowed tokens only. Every function works on a (B, V) float32 batch of
logits and returns a new array (the caller's logits are never modified).

- `apply_repetition_penalty`: the CTRL rule (Keskar et al. 2019, as HF implements it):
  a logit of a token already in the context is divided by the penalty when positive and
  multiplied by it when negative, so a penalty > 1 always makes the token less likely.
- `top_k_filter`: keeps the tokens whose logit is at least the k-th largest (ties at the
  boundary are all kept, as nanoGPT and HF do), the rest become -inf.
- `top_p_filter` (nucleus, Holtzman et al. 2019): keeps the smallest set of most likely
  tokens whose probability mass reaches p; tokens tied with the least likely kept one are
  kept too, so the set never depends on how a sort breaks ties.
- `sample`: greedy argmax, or one draw from the filtered distribution with the given
  `numpy.random.Generator` (inverse CDF: one uniform number per row).

`check_sampling_args` validates the user-facing arguments once, before any work.
"""

from __future__ import annotations

import numpy as np

from npllm import kernels
from npllm.errors import ConfigError


def check_sampling_args(
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
) -> None:
    """Raise `ConfigError` naming the bad argument and the valid range."""
    if not np.isfinite(temperature) or temperature < 0:
        raise ConfigError(
            f"temperature must be a finite number >= 0, got {temperature!r} "
            "(0 means greedy decoding; 1 samples the model's distribution as is)"
        )
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1
    ):
        raise ConfigError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ConfigError(f"top_p must be in (0, 1] or None, got {top_p!r} (1 keeps every token)")
    if not np.isfinite(repetition_penalty) or repetition_penalty <= 0:
        raise ConfigError(
            f"repetition_penalty must be a finite number > 0, got {repetition_penalty!r} "
            "(1 disables it; values above 1 discourage repeats)"
        )


def apply_repetition_penalty(logits: np.ndarray, context: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL/HF repetition penalty. logits (B, V); context (B, T) ids seen so far (the
    prompt and what was generated). Each distinct token is penalised once, however often
    it occurs."""
    out = np.array(logits, dtype=logits.dtype, copy=True)
    if penalty == 1.0 or context.shape[-1] == 0:
        return out
    pen = out.dtype.type(penalty)
    rows = np.arange(out.shape[0])[:, None]  # (B, 1), broadcast against context (B, T)
    seen = out[rows, context]  # (B, T); duplicates read the same original value
    out[rows, context] = np.where(seen > 0, seen / pen, seen * pen)
    return out


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the logits >= the k-th largest in each row; the others become -inf."""
    v = logits.shape[-1]
    if k >= v:
        return np.array(logits, copy=True)
    kth = np.partition(logits, v - k, axis=-1)[:, v - k : v - k + 1]  # (B, 1)
    return np.where(logits >= kth, logits, logits.dtype.type(-np.inf))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax over the last axis; -inf logits get probability exactly 0."""
    e = logits - logits.max(axis=-1, keepdims=True)
    np.exp(e, out=e)  # in place: the same values, two (B, V) temporaries fewer
    e /= e.sum(axis=-1, keepdims=True)
    return e


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter: keep the smallest top set whose probability reaches p (with ties at
    its boundary); the others become -inf. p = 1 keeps every token."""
    if p >= 1.0:
        return np.array(logits, copy=True)
    probs = softmax(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")  # (B, V), most likely first
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    # mass strictly before each token; a token is in the nucleus while that is below p
    before = np.cumsum(sorted_p, axis=-1) - sorted_p
    n_keep = np.maximum((before < p).sum(axis=-1), 1)  # (B,), at least the most likely token
    threshold = np.take_along_axis(sorted_p, (n_keep - 1)[:, None], axis=-1)  # (B, 1)
    return np.where(probs >= threshold, logits, logits.dtype.type(-np.inf))


def process_logits(
    logits: np.ndarray,
    context: np.ndarray,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Mask, penalty, temperature, top-k and top-p in HF's order. logits (B, V) -> (B, V).
    `mask` (B, V) bool: the tokens a grammar allows; the others get -inf first.
    Temperature 0 is left to `sample` (greedy); it is not divided by here."""
    if mask is not None:
        logits = np.where(mask, logits, logits.dtype.type(-np.inf))
    out = apply_repetition_penalty(logits, context, repetition_penalty)
    if temperature > 0 and temperature != 1.0:
        out /= out.dtype.type(temperature)
    if top_k is not None:
        out = top_k_filter(out, top_k)
    if top_p is not None:
        out = top_p_filter(out, top_p)
    return out


def sample(logits: np.ndarray, rng: np.random.Generator, *, greedy: bool = False) -> np.ndarray:
    """One token id per row of (B, V) logits: argmax when `greedy`, else a draw from
    softmax(logits) with `rng`. Returns (B,) int64."""
    if greedy:
        return logits.argmax(axis=-1).astype(np.int64)
    probs = softmax(logits)
    # float64 cumulative sums: over V up to ~50k a float32 running sum drifts by ~1e-3,
    # which would bias the draw (this runs once per token on V values, not a hot path)
    if kernels.backend() == "numpy" or probs.ndim != 2:
        cdf = np.cumsum(probs, axis=-1, dtype=np.float64)  # (B, V)
    else:  # the same sums, the rows side by side
        from npllm.kernels.decode import cumsum_rows  # Numba: imported when first drawn

        cdf = np.empty(probs.shape, np.float64)
        cumsum_rows(probs, cdf)
    total = cdf[:, -1]
    # u in [0, total): the product can round up to total, hence the nextafter
    u = np.minimum(rng.random(probs.shape[0]) * total, np.nextafter(total, 0.0))  # (B,)
    # first index whose cdf exceeds u: never a zero-probability token, whose cdf equals
    # its predecessor's
    ids = [np.searchsorted(c, x, side="right") for c, x in zip(cdf, u)]
    return np.array(ids, dtype=np.int64)
