"""Text generation: a KV-cache decoder on plain arrays, `generate` and `stream`.

`Decoder` runs GPT's forward for inference only: it reads the model's parameter arrays
(by their nanoGPT state-dict names) and builds no autograd graph. Prompts (prefill) and
recomputation run as NumPy array code, BLAS doing the matmuls; a decode step (one new
token per row) runs as one fused Numba call per block (`npllm.decode`), because at batch 1
the per-op overhead of a framework dominates (PERF_NOTES: ~0.7 ms a token for 4 layers in
torch eager). Linear weights may be float32 arrays or `npllm.quant.Int8Weight`s, which
run through the int8 kernel. Under `npllm.kernels.use("numpy")` decode steps take the
NumPy path too, which is the reference the fused step is tested against.

The KV cache (`KVCache`): per layer, keys and values preallocated as (B, nh, block_size, hs).
`Decoder.forward(idx, cache)` appends the keys and values of `idx`'s positions to the cache
and attends each new query over everything cached so far, so the same call is the prefill
(the whole prompt in one pass) and a decode step (one token). When the context passes
`block_size`, the window is cropped to the last `block_size` tokens and the cache is rebuilt
from them by a new prefill: positions are learned absolute embeddings, so cached keys cannot
be shifted to new positions. Every token past the window therefore costs a prefill of
`block_size` tokens, exactly what nanoGPT's recomputation does for every token.

`generate`/`stream` sample with the rules of `npllm.sampling`. Stop sequences are checked
on the generated ids only and are included in the output; in a batch, a row that has
stopped yields -1 from then on while the others continue. `regex=`, `json_schema=` or
`grammar=` constrain the output (`npllm.constrain`): a mask before sampling, and the
grammar's state advanced by each token; a row stops when its output is complete.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from npllm import kernels
from npllm.constrain import Grammar, Guide, compile_grammar
from npllm.decode import ACTIVATIONS, PARALLEL, SERIAL, decode_block, decode_head
from npllm.errors import ConfigError, DataError, ShapeError
from npllm.kernels.int8 import int8_linear
from npllm.quant import Int8Weight, load_weights
from npllm.sampling import check_sampling_args, process_logits, sample

_LAYERNORM = kernels.get("layernorm_forward", "numpy")
_RELU = kernels.get("relu_forward", "numpy")
_GELU = kernels.get("gelu_forward", "numpy")


_TRIALS = 8  # decode steps timed per setting before the decoder settles on one


@dataclass
class KVCache:
    """Keys and values of every layer, (B, nh, block_size, hs) each; positions
    [0, length) are filled."""

    k: list[np.ndarray]
    v: list[np.ndarray]
    length: int = 0


def _linear(x: np.ndarray, w: Any, b: np.ndarray | None) -> np.ndarray:
    """x (N, in) @ w (out, in).T + b -> (N, out), float32 or int8 weights."""
    if isinstance(w, Int8Weight):
        return int8_linear(x, w.q, w.scale, b)
    y = x @ w.T
    if b is not None:
        y += b
    return y


class Decoder:
    """GPT inference on arrays. `weights`: name -> float32 array or `Int8Weight`, with
    nanoGPT's names (`model.state_dict()`, or `npllm.quant.load_weights` of a quantized
    one); the lm_head is the token embedding (tied)."""

    def __init__(self, config: Any, weights: dict[str, Any]) -> None:
        self.config = config
        c = config
        self.n_head, self.hs = c.n_head, c.n_embd // c.n_head
        act = getattr(c, "activation", "gelu")
        if act not in ("gelu", "gelu_exact", "relu"):
            raise ConfigError(f"unknown activation {act!r}; use gelu, gelu_exact or relu")
        self.activation = act
        missing = [
            n
            for n in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight")
            if n not in weights
        ]
        if missing:
            raise ShapeError(f"the weights lack {', '.join(missing)}; pass a GPT's state dict")
        self.wte = weights["transformer.wte.weight"]  # (V, C), also the lm_head
        self.wpe = weights["transformer.wpe.weight"]  # (block_size, C)
        self.ln_f = (weights["transformer.ln_f.weight"], weights.get("transformer.ln_f.bias"))
        self.layers = []
        for i in range(c.n_layer):
            p = f"transformer.h.{i}."
            self.layers.append(
                {
                    name: weights.get(p + name)
                    for name in (
                        "ln_1.weight",
                        "ln_1.bias",
                        "attn.c_attn.weight",
                        "attn.c_attn.bias",
                        "attn.c_proj.weight",
                        "attn.c_proj.bias",
                        "ln_2.weight",
                        "ln_2.bias",
                        "mlp.c_fc.weight",
                        "mlp.c_fc.bias",
                        "mlp.c_proj.weight",
                        "mlp.c_proj.bias",
                    )
                }
            )

        self._fused: tuple | None = None  # the decode step's arguments, built on first use
        # The decode step's `par_min` (npllm.decode): None until the first decode steps
        # have timed SERIAL against PARALLEL, _TRIALS each, alternating; then the faster.
        # Set it to force one (tests, benchmarks); results are bitwise the same either way.
        self.par_min: int | None = None
        self._timings: dict[int, list[float]] = {SERIAL: [], PARALLEL: []}

    def _fused_args(self) -> tuple:
        """Per block, the arrays `npllm.decode.decode_block` takes (weights with their
        scales, ones for float32; zero biases where the model has none); then the head's."""
        if self._fused is None:

            def mat(w: Any, b: Any) -> tuple:
                q, sc = (
                    (w.q, w.scale)
                    if isinstance(w, Int8Weight)
                    else (w, np.ones(w.shape[0], np.float32))
                )
                return q, sc, np.zeros(q.shape[0], np.float32) if b is None else b

            def ln(w: np.ndarray, b: Any) -> tuple:
                return w, np.zeros_like(w) if b is None else b

            blocks = [
                (
                    *ln(p["ln_1.weight"], p["ln_1.bias"]),
                    *mat(p["attn.c_attn.weight"], p["attn.c_attn.bias"]),
                    *mat(p["attn.c_proj.weight"], p["attn.c_proj.bias"]),
                    *ln(p["ln_2.weight"], p["ln_2.bias"]),
                    *mat(p["mlp.c_fc.weight"], p["mlp.c_fc.bias"]),
                    *mat(p["mlp.c_proj.weight"], p["mlp.c_proj.bias"]),
                )
                for p in self.layers
            ]
            self._fused = (blocks, (*ln(*self.ln_f), *mat(self.wte, None)))
            # the most weights of one product: the lm_head's or a block's largest
            self._biggest = max(
                int(np.prod(w.shape))
                for w in [self.wte]
                + [
                    p[n]
                    for p in self.layers
                    for n in (
                        "attn.c_attn.weight",
                        "attn.c_proj.weight",
                        "mlp.c_fc.weight",
                        "mlp.c_proj.weight",
                    )
                ]
            )
        return self._fused

    def _step(self, idx: np.ndarray, cache: KVCache) -> np.ndarray:
        """One new token per row (B, 1) through the fused Numba kernels -> logits (B, V)."""
        blocks, head = self._fused_args()
        pos = cache.length
        if isinstance(self.wte, Int8Weight):
            x = self.wte.rows(idx[:, 0])  # (B, C)
        else:
            x = self.wte[idx[:, 0]]  # (B, C)
        x += self.wpe[pos]
        act = ACTIVATIONS[self.activation]
        par_min, timings = self.par_min, self._timings
        if par_min is None and self._biggest * x.shape[0] < PARALLEL:
            par_min = SERIAL  # no product is big enough for the choice to matter
        timed = par_min is None
        if timed:
            par_min = SERIAL if len(timings[SERIAL]) <= len(timings[PARALLEL]) else PARALLEL
            t0 = time.perf_counter()
        for i, args in enumerate(blocks):
            decode_block(x, pos, *args, cache.k[i], cache.v[i], act, par_min)
        cache.length = pos + 1
        logits = decode_head(x, *head, par_min)
        if timed:
            timings[par_min].append(time.perf_counter() - t0)
            if len(timings[PARALLEL]) == _TRIALS:
                # medians: the first step of each also pays compilation / thread start-up
                self.par_min = min(timings, key=lambda k: statistics.median(timings[k]))
        return logits

    @classmethod
    def from_model(cls, model: Any) -> Decoder:
        """A decoder over a GPT's parameter arrays (shared, not copied)."""
        return cls(model.config, load_weights(model.state_dict()))

    def new_cache(self, batch: int) -> KVCache:
        c = self.config
        shape = (batch, self.n_head, c.block_size, self.hs)
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
        if start + T > self.config.block_size:
            raise ShapeError(
                f"{start + T} positions do not fit block_size {self.config.block_size}; "
                "crop the context to its last block_size tokens"
            )
        if T == 1 and cache is not None and last_only and kernels.backend() != "numpy":
            return self._step(idx, cache)
        if isinstance(self.wte, Int8Weight):
            x = self.wte.rows(idx)  # (B, T, C)
        else:
            x = self.wte[idx]  # (B, T, C)
        x = (x + self.wpe[start : start + T]).reshape(B * T, -1)  # (B*T, C)
        for i, p in enumerate(self.layers):
            h = self._layernorm(x, p["ln_1.weight"], p["ln_1.bias"])
            x += self._attention(h, p, B, T, i, start, cache)
            h = self._layernorm(x, p["ln_2.weight"], p["ln_2.bias"])
            h = self._activation(_linear(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"]))
            x += _linear(h, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
        if cache is not None:
            cache.length = start + T
        C = x.shape[-1]
        if last_only:
            x = x.reshape(B, T, C)[:, -1]  # (B, C): the only logits sampling needs
        x = self._layernorm(x, *self.ln_f)
        logits = _linear(x, self.wte, None)  # (B*T, V) or (B, V)
        return logits if last_only else logits.reshape(B, T, -1)

    __call__ = forward

    # This NumPy forward (prompts, recomputation, the fused step's reference) takes the
    # kernels' NumPy references for LayerNorm and the activations, so BLAS is the only
    # thread pool it wakes: two pools alternating fight (PERF_NOTES). Exact GELU needs
    # erf, which NumPy lacks: the active kernel (the NumPy one under kernels.use("numpy")).
    def _layernorm(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        return _LAYERNORM(x, w, b, 1e-5)[0]

    def _activation(self, h: np.ndarray) -> np.ndarray:
        if self.activation == "relu":
            return _RELU(h)
        if self.activation == "gelu":
            return _GELU(h, "tanh")
        return kernels.gelu_forward(h, "none")

    def _attention(
        self, h: np.ndarray, p: dict, B: int, T: int, layer: int, start: int, cache: KVCache | None
    ) -> np.ndarray:
        nh, hs = self.n_head, self.hs
        C = nh * hs
        qkv = _linear(h, p["attn.c_attn.weight"], p["attn.c_attn.bias"])  # (B*T, 3C)
        qkv = qkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nh, T, hs) each
        S = start + T
        if cache is not None:
            cache.k[layer][:, :, start:S] = k
            cache.v[layer][:, :, start:S] = v
            k, v = cache.k[layer][:, :, :S], cache.v[layer][:, :, :S]  # (B, nh, S, hs)
        att = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / math.sqrt(hs))  # (B, nh, T, S)
        if T > 1:
            # query t sits at position start + t and sees keys up to it
            mask = np.arange(S)[None, :] > (start + np.arange(T))[:, None]  # (T, S)
            att[..., mask] = -np.inf
        att = np.exp(att - att.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B * T, C)  # (B*T, C), heads side by side
        return _linear(y, p["attn.c_proj.weight"], p["attn.c_proj.bias"])


def as_decoder(model: Any) -> Decoder:
    """A `Decoder` as is, or one over a GPT's parameters."""
    return model if isinstance(model, Decoder) else Decoder.from_model(model)


def _stop_sequences(stop: Any) -> list[np.ndarray]:
    """None -> []; a token id -> [[id]]; a list of ids -> that one sequence; a list of
    lists -> several sequences."""
    if stop is None:
        return []
    if isinstance(stop, (int, np.integer)):
        return [np.array([stop], np.int64)]
    stop = list(stop)
    if stop and all(isinstance(s, (int, np.integer)) for s in stop):
        stop = [stop]
    seqs = [np.asarray(s, np.int64).reshape(-1) for s in stop]
    if not seqs or any(s.size == 0 for s in seqs):
        raise ConfigError(
            f"stop must be a token id, a non-empty list of ids or a list of such lists, "
            f"got {stop!r}"
        )
    return seqs


def stream(
    model: Any,
    idx: Any,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
    stop: int | Sequence[int] | Sequence[Sequence[int]] | None = None,
    use_cache: bool = True,
    regex: str | None = None,
    json_schema: Any = None,
    grammar: Grammar | str | None = None,
    tokenizer: Any = None,
) -> Iterator[Any]:
    """Yield new token ids one step at a time: an int for a 1-D prompt (T,), a (B,) int64
    array for a batch (B, T) of equal-length prompts (-1 for rows already stopped). The
    generator's return value (`StopIteration.value`) is the finish reason, "stop" when
    every row ended with a stop sequence, else "length".

    `model` is a GPT or a `Decoder`. temperature 0 or `greedy` picks the argmax; `seed`
    seeds the sampler's `numpy.random.Generator`. `use_cache=False` recomputes the whole
    context for every token (for comparison). Prompts longer than block_size are cropped
    to their last block_size tokens.

    Constraints (`npllm.constrain`; at most one): `regex` (fully matched), `json_schema`
    (a dict or JSON text), or `grammar` (a built `Grammar`, or "json_object" / "json");
    the first two need the model's `tokenizer`. A row then stops ("stop") once its output
    is complete, and an output cut by `max_new_tokens` is complete too."""
    check_sampling_args(temperature, top_k, top_p, repetition_penalty)
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, (int, np.integer))
        or max_new_tokens < 0
    ):
        raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    stops = _stop_sequences(stop)
    dec = as_decoder(model)
    single = np.ndim(idx) == 1
    context = dec.check_idx(np.asarray(idx)[None] if single else idx)  # (B, T)
    g = compile_grammar(
        regex=regex,
        json_schema=json_schema,
        grammar=grammar,
        tokenizer=tokenizer,
        vocab_size=dec.config.vocab_size,
    )
    guide = None if g is None else g.guide(context.shape[0], max_new_tokens)
    # validated above, before the first `next`: a generator body would only raise there
    return _stream(
        dec,
        context,
        max_new_tokens,
        single,
        stops,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        greedy=greedy or temperature == 0,
        rng=np.random.default_rng(seed),
        use_cache=use_cache,
        guide=guide,
    )


def _stream(
    dec: Decoder,
    context: np.ndarray,
    max_new_tokens: int,
    single: bool,
    stops: list[np.ndarray],
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    greedy: bool,
    rng: np.random.Generator,
    use_cache: bool,
    guide: Guide | None = None,
) -> Iterator[Any]:
    B, T0 = context.shape
    bs = dec.config.block_size
    if max_new_tokens == 0:
        return "length"
    # preallocated: the context the model sees, and the ids handed out (-1 once stopped)
    ctx = np.empty((B, T0 + max_new_tokens), np.int64)
    ctx[:, :T0] = context
    new = np.full((B, max_new_tokens), -1, np.int64)
    done = np.zeros(B, bool) if guide is None else guide.finished.copy()
    if done.all():  # the grammar's output is complete before any token
        return "stop"
    # greedy picks the argmax, which temperature, top-k and top-p never change
    plain = greedy and repetition_penalty == 1.0
    cache = dec.new_cache(B) if use_cache else None
    logits = dec.forward(context[:, -bs:], cache, last_only=True)  # (B, V)
    for step in range(max_new_tokens):
        n = T0 + step  # context length so far
        mask = None if guide is None else guide.mask()  # (B, V) allowed tokens
        if not plain or mask is not None:
            logits = process_logits(
                logits,
                ctx[:, :n],
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                mask=mask,
            )
        nxt = sample(logits, rng, greedy=greedy)  # (B,)
        complete = None if guide is None else guide.advance(nxt, ~done)
        if done.any():
            # a stopped row keeps feeding its last token (ignored) so the batch stays aligned
            ctx[:, n] = np.where(done, ctx[:, n - 1], nxt)
            nxt[done] = -1
        else:
            ctx[:, n] = nxt
        new[:, step] = nxt
        yield int(nxt[0]) if single else nxt
        for s in stops:
            if step + 1 >= s.size:
                done |= np.all(new[:, step + 1 - s.size : step + 1] == s, axis=1)
        if complete is not None:
            done |= complete
        if done.all():
            return "stop"
        if step == max_new_tokens - 1:
            break
        if cache is None:
            logits = dec.forward(ctx[:, max(0, n + 1 - bs) : n + 1], None, last_only=True)
        elif cache.length == bs:
            # the window is full: crop it and rebuild the cache from the cropped context
            cache.length = 0
            logits = dec.forward(ctx[:, n + 1 - bs : n + 1], cache, last_only=True)
        else:
            logits = dec.forward(ctx[:, n : n + 1], cache, last_only=True)
    return "length"


def generate(
    model: Any,
    idx: Any,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
    stop: int | Sequence[int] | Sequence[Sequence[int]] | None = None,
    use_cache: bool = True,
    regex: str | None = None,
    json_schema: Any = None,
    grammar: Grammar | str | None = None,
    tokenizer: Any = None,
) -> tuple[np.ndarray, str]:
    """Generate up to `max_new_tokens` ids after the prompt `idx` ((T,) or (B, T)).
    Returns (new_ids, finish_reason): new_ids (n,) or (B, n) int64 without the prompt
    (rows that stopped early are padded with -1), finish_reason "stop" or "length".
    Arguments as `stream`."""
    it = stream(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        greedy=greedy,
        seed=seed,
        stop=stop,
        use_cache=use_cache,
        regex=regex,
        json_schema=json_schema,
        grammar=grammar,
        tokenizer=tokenizer,
    )
    ids: list[Any] = []
    while True:
        try:
            ids.append(next(it))
        except StopIteration as fin:
            reason = fin.value
            break
    single = np.ndim(idx) == 1
    if single:
        return np.array(ids, np.int64), reason
    B = np.shape(idx)[0]
    return (np.stack(ids, axis=1) if ids else np.empty((B, 0), np.int64)), reason
