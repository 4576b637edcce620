"""A KV-cache decoder on plain arrays: GPT inference for `generate`, `stream`, chat and serve.

`Decoder` runs GPT's forward for inference only: it reads the per-block records that the
model description (`npllm.arch`) gathers from the model's parameter arrays, and builds no
autograd graph. Prompts (prefill) and recomputation run as array code: the matmuls
(linear layers, attention) on the active kernels, so on Numba's thread pool like the
decode step that follows (the element-wise ops on the NumPy references, which start no
threads); a decode step (one new token per row) runs as one fused Numba call per block
(`npllm.kernels.decode`), because at batch 1 the per-op overhead of a framework
dominates (docs/performance.md, "Dispatch cost").
Linear weights may be float32 arrays or `npllm.quant.Int8Weight`s or `Int4Weight`s, which
run through the int8 and int4 kernels. Under `npllm.kernels.use("numpy")` decode steps
take the NumPy path too, which is the reference the fused step is tested against.

The KV cache (`KVCache`): per layer, keys and values preallocated as
(B, n_kv_head, slots, hs). `Decoder.forward(idx, cache)` appends the keys and values of
`idx`'s positions to the cache and attends each new query over what it can see, so the
same call is the prefill (the whole prompt in one pass) and a decode step (one token).
- Learned positions (GPT-2): slots = block_size. When the context passes block_size, the
  window is cropped to its last block_size tokens and the cache rebuilt from them by a new
  prefill: cached keys cannot be moved to new positions, so every token past the window
  costs a prefill of block_size tokens, as nanoGPT's recomputation does.
- RoPE: the cache rolls. The model attends to its last `window` positions (sliding_window,
  else block_size), slots = window and position p lives in slot p % window; a key keeps
  the rotation of its own position, so a token past the window costs one decode step.
  This equals recomputing the whole context with that window (tests/model/test_llama.py).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from npllm import arch, kernels
from npllm.errors import DataError, ShapeError
from npllm.kernels.decode import PARALLEL, SERIAL, decode_block, decode_head
from npllm.layers.rope import config_rope, rope_tables
from npllm.quant import load_weights

# The array forward (prompts, recomputation, the fused step's reference under
# kernels.use("numpy")). Its products run on the active kernels (`kernels.linear_forward`,
# `kernels.attention_forward`): with the Numba backend that is BLAS inside Numba's pool,
# the pool the decode step uses. NumPy's `@` would wake OpenBLAS's own pool, whose
# workers spin for a while after a prompt: the decode steps right after it then waited
# for the cores, 11 ms a step instead of 0.9 at guppy (docs/performance.md, "Two thread
# pools"). The element-wise ops take the NumPy references (no threads). Exact GELU needs
# erf, which NumPy lacks: it takes the active kernel.
_NORMS = {
    "layernorm": lambda x, w, b, eps: kernels.get("layernorm_forward", "numpy")(x, w, b, eps)[0],
    "rmsnorm": lambda x, w, b, eps: kernels.get("rmsnorm_forward", "numpy")(x, w, eps)[0],
}
_ROPE = kernels.get("rope_forward", "numpy")
_SWIGLU = kernels.get("swiglu_forward", "numpy")
_ACTIVATIONS = {
    "gelu": lambda h: kernels.get("gelu_forward", "numpy")(h, "tanh"),
    "gelu_exact": lambda h: kernels.gelu_forward(h, "none"),
    "relu": kernels.get("relu_forward", "numpy"),
    # the up projection's rows are the gate's, then up's (npllm.arch.BlockWeights)
    "swiglu": lambda f: _SWIGLU(*np.split(f, 2, axis=-1)),
}


_TRIALS = 8  # decode steps timed per setting before the decoder settles on one
_NO_ROPE = np.zeros((1, 0), np.float32)


@dataclass
class KVCache:
    """Keys and values of every layer, (B, n_kv_head, block_size, hs) each; positions
    [0, length) are filled."""

    k: list[np.ndarray]
    v: list[np.ndarray]
    length: int = 0


def _linear(x: np.ndarray, w: np.ndarray, s: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (N, in) @ w (out, in).T + b -> (N, out): float32 weights by the active linear
    kernel (their scales are ones), int8 and int4 ones through their kernels."""
    if w.dtype == np.int8:
        return kernels.int8_linear(x, w, s, b)
    if w.dtype == np.uint8:
        return kernels.int4_linear(x, w, s, b)
    return kernels.linear_forward(x, w, b)


class Decoder:
    """GPT inference on arrays. `weights`: name -> float32 array or quantized weight under the
    model's state-dict names (`model.state_dict()`, or `npllm.quant.load_weights` of a
    quantized one); `npllm.arch` turns them into the per-block records this runs on."""

    def __init__(self, config: Any, weights: dict[str, Any]) -> None:
        self.config = config
        self.spec = arch.spec(config)
        self.n_kv_head, self.hs = self.spec.n_kv_head, config.n_embd // config.n_head
        self.activation = arch.activation(config)
        self._norm_kind = getattr(config, "norm", None) or "layernorm"
        # RoPE models roll their cache past the window: a key keeps its rotation, and the
        # model attends to the last `window` positions (sliding_window, else block_size).
        self.rolling = bool(self.spec.rope)
        window = self.spec.window or (config.block_size if self.rolling else 0)
        self._window = min(window, config.block_size) if window else 0
        # RoPE: inverse frequencies; a position's angles are made when it is first seen
        self._freqs = config_rope(config) if self.spec.rope else None
        self.weights = arch.inference_weights(config, weights)
        w = self.weights
        self._records = [tuple(r) for r in w.blocks]
        # the most weights of one product: the lm_head's or a block's largest
        products = [m for r in w.blocks for m in (r.qkv_w, r.out_w, r.up_w, r.down_w)]
        self._biggest = max(
            a.size * (2 if a.dtype == np.uint8 else 1) for a in [w.head.w, *products]
        )
        # The decode step's `par_min` (npllm.kernels.decode): None until the first decode
        # steps have timed SERIAL against PARALLEL, _TRIALS each, alternating; then the
        # faster. Set it to force one (tests, benchmarks); results are bitwise the same.
        self.par_min: int | None = None
        self._timings: dict[int, list[float]] = {SERIAL: [], PARALLEL: []}
        # A list to collect each layer's attention probabilities (B, nh, T, Tk) on the
        # NumPy forward (`npllm.viz.attention_maps`); None: nothing is kept.
        self.attention_maps: list[np.ndarray] | None = None

    def _embed(self, idx: np.ndarray, start: int) -> np.ndarray:
        """Token (+ learned position) embeddings of idx (B, T) at positions start.. -> (B, T, C)."""
        emb = self.weights.embed
        x = emb[idx] if isinstance(emb, np.ndarray) else emb.rows(idx)  # quantized: rows()
        if self.weights.pos is not None:
            x = x + self.weights.pos[start : start + idx.shape[1]]
        return x

    def _step(self, idx: np.ndarray, cache: KVCache) -> np.ndarray:
        """One new token per row (B, 1) at the cache's position -> logits (B, V)."""
        positions = np.full(idx.shape[0], cache.length, np.int64)
        logits = self.step_rows(idx[:, 0], positions, cache)
        cache.length += 1
        return logits

    def step_rows(self, ids: np.ndarray, positions: np.ndarray, cache: KVCache) -> np.ndarray:
        """One new token per row, row b at its own position `positions[b]` (B,) int64,
        through the fused Numba kernels -> logits (B, V). Row b of the cache holds that
        row's earlier positions; `cache.length` is neither read nor changed. The server's
        continuous batching (`npllm.serve.engine`) steps rows of different requests, each
        at its own length, together this way. Under `kernels.use("numpy")` each row takes
        the NumPy forward on its own (the reference)."""
        if kernels.backend() == "numpy":
            rows = []
            for b, p in enumerate(positions):
                row = KVCache([k[b : b + 1] for k in cache.k], [v[b : b + 1] for v in cache.v], p)
                rows.append(self.forward(ids[b : b + 1, None], row, last_only=True)[0])
            return np.stack(rows)
        emb = self.weights.embed
        x = emb[ids] if isinstance(emb, np.ndarray) else emb.rows(ids)  # quantized: rows()
        if self.weights.pos is not None:
            x = x + self.weights.pos[positions]
        x = np.ascontiguousarray(x, np.float32)  # (B, C)
        par_min, timings = self.par_min, self._timings
        if par_min is None and self._biggest * x.shape[0] < PARALLEL:
            par_min = SERIAL  # no product is big enough for the choice to matter
        timed = par_min is None
        if timed:
            par_min = SERIAL if len(timings[SERIAL]) <= len(timings[PARALLEL]) else PARALLEL
            t0 = time.perf_counter()
        spec = tuple(self.spec)  # plain tuples: Numba types them fast (kernels/decode.py)
        cos, sin = self._rope_tables(positions)
        for i, w in enumerate(self._records):
            decode_block(x, positions, w, cache.k[i], cache.v[i], cos, sin, spec, par_min)
        logits = decode_head(x, tuple(self.weights.head), spec, par_min)
        if timed:
            timings[par_min].append(time.perf_counter() - t0)
            if len(timings[PARALLEL]) == _TRIALS:
                # medians: the first step of each also pays compilation / thread start-up
                self.par_min = min(timings, key=lambda k: statistics.median(timings[k]))
        return logits

    @classmethod
    def from_model(cls, model: Any) -> Decoder:
        """A decoder over a GPT's parameter arrays (shared, not copied, where the model
        keeps a projection in one matrix)."""
        return cls(model.config, load_weights(model.state_dict()))

    def new_cache(self, batch: int) -> KVCache:
        """Room for block_size positions; a rolling cache holds its window's positions,
        position p in slot p % window."""
        c = self.config
        slots = self._window if self.rolling else c.block_size
        shape = (batch, self.n_kv_head, slots, self.hs)
        return KVCache(
            [np.zeros(shape, np.float32) for _ in range(c.n_layer)],
            [np.zeros(shape, np.float32) for _ in range(c.n_layer)],
        )

    def check_idx(self, idx: Any) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.ndim != 2 or idx.shape[1] == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ShapeError(
                f"token ids must be a non-empty integer array (B, T) or (T,), got dtype "
                f"{idx.dtype} and shape {idx.shape}"
            )
        V = self.config.vocab_size
        if idx.min() < 0 or idx.max() >= V:
            raise DataError(
                f"token ids must be in [0, {V - 1}] for vocab_size {V}, got "
                f"[{idx.min()}, {idx.max()}]; encode with the model's own tokenizer"
            )
        return idx.astype(np.int64, copy=False)

    def forward(
        self, idx: np.ndarray, cache: KVCache | None = None, last_only: bool = False
    ) -> np.ndarray:
        """Logits (B, T, V) for token ids idx (B, T) (valid ids, see `check_idx`), or (B, V)
        for the last position with `last_only`. With a cache, idx continues the cached
        positions (their keys and values are appended); without one, idx is the whole
        context. One new token per row with a cache takes the fused decode step."""
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.config.block_size and not self.rolling:
            raise ShapeError(
                f"{start + T} positions do not fit block_size {self.config.block_size}; "
                "crop the context to its last block_size tokens"
            )
        if T == 1 and cache is not None and last_only and kernels.backend() != "numpy":
            return self._step(idx, cache)
        x = self._embed(idx, start).reshape(B * T, -1)  # (B*T, C)
        for i, w in enumerate(self.weights.blocks):
            x += self._attention(self._norm(x, w.norm_1_w, w.norm_1_b), w, B, T, i, start, cache)
            h = _linear(self._norm(x, w.norm_2_w, w.norm_2_b), w.up_w, w.up_s, w.up_b)
            x += _linear(_ACTIVATIONS[self.activation](h), w.down_w, w.down_s, w.down_b)
        if cache is not None:
            cache.length = start + T
        C = x.shape[-1]
        if last_only:
            x = x.reshape(B, T, C)[:, -1]  # (B, C): the only logits sampling needs
        head = self.weights.head
        logits = _linear(self._norm(x, head.norm_w, head.norm_b), head.w, head.s, head.b)
        return logits if last_only else logits.reshape(B, T, -1)  # (B, V) or (B, T, V)

    __call__ = forward

    def _norm(self, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _NORMS[self._norm_kind](x, w, b, self.spec.eps)

    def _rope_tables(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RoPE's cos and sin (T, hs/2) float32 for `positions` (T,) (empty without RoPE)."""
        if self._freqs is None:
            return _NO_ROPE, _NO_ROPE
        cos, sin = rope_tables(positions, *self._freqs)
        return cos.astype(np.float32), sin.astype(np.float32)

    def _attention(
        self,
        h: np.ndarray,
        w: arch.BlockWeights,
        B: int,
        T: int,
        layer: int,
        start: int,
        cache: KVCache | None,
    ) -> np.ndarray:
        nh, nkv, hs = self.spec.n_head, self.n_kv_head, self.hs
        qkv = _linear(h, w.qkv_w, w.qkv_s, w.qkv_b).reshape(B, T, nh + 2 * nkv, hs)
        qkv = qkv.transpose(0, 2, 1, 3)  # (B, nh + 2 nkv, T, hs): q heads, k heads, v heads
        q, k, v = qkv[:, :nh], qkv[:, nh : nh + nkv], qkv[:, nh + nkv :]
        if self._freqs is not None:
            cos, sin = self._rope_tables(np.arange(start, start + T))
            q, k = _ROPE(q, cos, sin), _ROPE(k, cos, sin)
        if cache is not None:
            k, v = self._cached(cache, layer, start, k, v)  # (B, nkv, P + T, hs)
        if nkv != nh:  # grouped-query: each k/v head serves nh / nkv query heads
            k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        # causal, aligned to the end: query t (position start + t) sees keys up to it
        v = np.ascontiguousarray(v)
        # (B, nh, T, hs), (B, nh, T, Tk)
        y, att = kernels.attention_forward(q, k, v, True, self._window or 0)
        if self.attention_maps is not None:
            self.attention_maps.append(att)
        y = y.transpose(0, 2, 1, 3).reshape(B * T, nh * hs)  # heads side by side
        return _linear(y, w.out_w, w.out_s, w.out_b)

    def _cached(
        self, cache: KVCache, layer: int, start: int, k: np.ndarray, v: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The keys and values the new positions [start, start + T) attend to: the cached
        earlier ones they can see, in position order, then their own; the new ones are
        stored (position p in slot p % slots; the last `slots` of them)."""
        kc, vc = cache.k[layer], cache.v[layer]
        slots, T = kc.shape[2], k.shape[2]
        seen = min(start, self._window - 1) if self._window else start  # earlier positions
        old = np.arange(start - seen, start) % slots
        keys = np.concatenate([kc[:, :, old], k], axis=2)
        values = np.concatenate([vc[:, :, old], v], axis=2)
        new = np.arange(max(start, start + T - slots), start + T)
        kc[:, :, new % slots] = k[:, :, new - start]
        vc[:, :, new % slots] = v[:, :, new - start]
        return keys, values


def as_decoder(model: Any) -> Decoder:
    """A `Decoder` as is, or one over a GPT's parameters."""
    return model if isinstance(model, Decoder) else Decoder.from_model(model)
