"""Text generation: `generate` and `stream` over a `Decoder` (npllm.decoder) and its KV
cache.

`generate`/`stream` sample with the rules of `npllm.sampling`. Stop sequences are checked
on the generated ids only and are included in the output; in a batch, a row that has
stopped yields -1 from then on while the others continue. `regex=`, `json_schema=` or
`grammar=` constrain the output (`npllm.constrain`): a mask before sampling, and the
grammar's state advanced by each token; a row stops when its output is complete.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from npllm.constrain import Grammar, Guide, compile_grammar
from npllm.decoder import Decoder, as_decoder
from npllm.errors import ConfigError
from npllm.sampling import check_sampling_args, process_logits, sample


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
            # recomputation: the whole context when the model rolls past its window
            first = 0 if dec.rolling else max(0, n + 1 - bs)
            logits = dec.forward(ctx[:, first : n + 1], None, last_only=True)
        elif cache.length == bs and not dec.rolling:
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
