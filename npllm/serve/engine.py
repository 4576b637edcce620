"""The serving engine: continuous batching of every request's choices in one decode loop.

One thread owns the model. Each choice of a request (`n` of them) is a `Sequence`: its
prompt ids, its sampling parameters, its random generator, its row of the KV cache and a
callback that receives what it produces. The loop, over and over:

1. admit waiting sequences while rows are free: a prefill of the prompt into the
   sequence's own cache row (the `n` choices of a request share one prefill, its keys and
   values copied to their rows), then the first token from the prefill's logits;
2. one decode step for all running rows at once (`Decoder.step_rows`): every row at its
   own position, so a request that arrives joins the batch at the next step and one that
   finishes leaves it; the weights are read once per step for all rows, which is where
   batching pays on a memory-bound CPU decode;
3. each row samples its own next token with its own parameters (`Sequence.choose`) and
   reports text, log-probabilities and its finish reason;
4. finished or cancelled rows leave: the last row moves into the freed one (its cache
   copied up to its length), so the running rows stay rows 0..n-1 of the cache.

Handing events over: each sequence's `emit` is called on this thread as it produces, and
`flush` (when given) once a step, right before the step's kernels start: the server
gathers the events and hands them to its event loop in one wake-up, which then sends
them while the kernels run (they let go of the GIL), instead of taking the GIL from the
loop's Python (sampling, bookkeeping) in between, where the two threads would take
turns at every NumPy call.

A client that disconnects cancels its sequences, which leave at the next step. A failure
inside the loop fails the sequences involved (the server answers them with a 500) and the
loop carries on. Each row's logits depend only on that row (the fused products sum each
output row by itself), so a seeded request gives the same tokens whatever else runs.

The choices themselves, their text and stop strings: `npllm.serve.sequence`.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from npllm.constrain.index import vocabulary_bytes
from npllm.decoder import Decoder, KVCache
from npllm.kernels.decode import PARALLEL, SERIAL
from npllm.sampling import process_logits, sample
from npllm.serve.sequence import Event, Sequence

log = logging.getLogger("npllm.serve")
_NO_CONTEXT = np.zeros((1, 0), np.int64)  # no repetition penalty: no context needed


class Engine:
    """The decode loop over up to `max_batch` rows (see the module's docstring)."""

    def __init__(
        self,
        decoder: Decoder,
        tokenizer: Any,
        max_batch: int = 64,
        flush: Callable[[], None] | None = None,
    ) -> None:
        self.dec, self.tokenizer, self.max_batch = decoder, tokenizer, max_batch
        self.flush = flush or (lambda: None)  # hands the events emitted so far over
        V = decoder.config.vocab_size
        self.block_size = decoder.config.block_size
        # ids the model has but the tokenizer cannot decode (a padded vocabulary) never come
        self.valid = min(V, tokenizer.vocab_size)  # ids from here on are not tokens
        self.token_bytes = [b or b"" for b in vocabulary_bytes(tokenizer, V)]
        for text, i in getattr(tokenizer, "specials", {}).items():
            if i < V:
                self.token_bytes[i] = text.encode()
        # The decode step's threading (`Decoder.par_min`, serial or parallel products) is
        # timed by the decoder on its first steps; what pays for one row need not for 16,
        # so each batch-size class (1, 2-3, 4-7, ...) gets its own timing and choice,
        # unless the decoder was given one.
        self.forced = decoder.par_min is not None
        self.threading: dict[int, tuple[int | None, dict]] = {}
        self.cache = decoder.new_cache(max_batch)
        self.rows: list[Sequence] = []  # running; self.rows[i] owns cache row i
        self.pending: collections.deque[list[Sequence]] = collections.deque()
        self.cv = threading.Condition()
        self.stopping = False
        self.steps = collections.Counter()  # decode steps run, by the rows they held
        self.cancelled = 0  # sequences that left unfinished (their client went away)
        self.thread = threading.Thread(target=self._run, name="npllm-engine", daemon=True)

    # ---- called from the server's threads ------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify()
        self.thread.join(timeout=10)

    def submit(self, group: list[Sequence]) -> None:
        """Queue the choices of one request (they share their prompt)."""
        with self.cv:
            self.pending.append(list(group))
            self.cv.notify()

    def cancel(self, group: list[Sequence]) -> None:
        """Stop generating these; they leave the batch at the next step."""
        for s in group:
            s.cancelled = True
        with self.cv:
            self.cv.notify()

    @property
    def load(self) -> tuple[int, int]:
        """(running rows, waiting sequences)."""
        return len(self.rows), sum(len(g) for g in self.pending)

    # ---- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cv:
                if not self.rows and not self.pending:
                    self.flush()
                while not self.stopping and not self.rows and not self.pending:
                    self.cv.wait()
                if self.stopping:
                    return
                admitted = self._take()
            try:
                self._admit(admitted)
                self._leave()
                if self.rows:
                    self._step()
            except Exception as e:  # a server fault: fail what was running, keep serving
                log.exception("the decode loop failed")
                for s in self.rows + admitted:
                    if not s.done:
                        s.finish_reason = "error"
                        s.emit(Event(s.index, finish_reason="error", error=str(e)))
                self.rows = []
                self.flush()
            self._leave()

    def _take(self) -> list[Sequence]:
        """Waiting sequences for the free rows (a request may be split over steps)."""
        free = self.max_batch - len(self.rows)
        out: list[Sequence] = []
        while self.pending and free > 0:
            group = [s for s in self.pending[0] if not s.cancelled]
            take, rest = group[:free], group[free:]
            out += take
            free -= len(take)
            if rest:
                self.pending[0] = rest
            else:
                self.pending.popleft()
        return out

    def _row_cache(self, row: int) -> KVCache:
        c = self.cache
        return KVCache([k[row : row + 1] for k in c.k], [v[row : row + 1] for v in c.v])

    def _admit(self, seqs: list[Sequence]) -> None:
        """Prefill each new sequence into a free row and choose its first token; choices
        of one request with the same prompt copy the first one's cache row."""
        shared: dict[tuple[int, ...], tuple[int, np.ndarray]] = {}
        for s in seqs:
            row = len(self.rows)
            self.rows.append(s)
            key = tuple(s.prompt)
            if key in shared:
                src, logits = shared[key]
                self._copy_row(src, row, len(s.prompt))
            else:
                prompt = np.asarray(s.prompt, np.int64)[None]
                logits = self.dec.forward(prompt, self._row_cache(row), last_only=True)[0]
                shared[key] = (row, logits)
            self._choose(s, logits.copy())

    def _step(self) -> None:
        n = len(self.rows)
        ids = np.array([s.last for s in self.rows], np.int64)
        positions = np.array([s.position for s in self.rows], np.int64)
        c = self.cache
        view = KVCache([k[:n] for k in c.k], [v[:n] for v in c.v])
        dec, size = self.dec, n.bit_length()
        if not self.forced:
            dec.par_min, dec._timings = self.threading.get(size, (None, {SERIAL: [], PARALLEL: []}))
        self.flush()  # the last step's events go out while this one's kernels run
        logits = dec.step_rows(ids, positions, view)  # (n, V)
        if not self.forced:
            self.threading[size] = (dec.par_min, dec._timings)
        self.steps[n] += 1
        self._choose_all(self.rows, logits)

    def _copy_row(self, src: int, dst: int, length: int) -> None:
        """Cache row dst = row src over its first `length` slots."""
        for k, v in zip(self.cache.k, self.cache.v):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def _leave(self) -> None:
        """Drop finished and cancelled rows: running rows past the new end move into the
        holes (their cache rows copied up to their length), so rows 0..n-1 run."""
        keep = [s for s in self.rows if not s.done]
        self.cancelled += sum(s.finish_reason is None for s in self.rows if s.done)
        n = len(keep)
        holes = (i for i, s in enumerate(self.rows[:n]) if s.done)
        for src in range(n, len(self.rows)):
            if not self.rows[src].done:
                dst = next(holes)
                moved = self.rows[src]
                self._copy_row(src, dst, min(moved.position, self.cache.k[0].shape[2]))
                self.rows[dst] = moved
        del self.rows[n:]

    # ---- one token of each sequence -------------------------------------------------------
    def _choose_all(self, seqs: list[Sequence], logits: np.ndarray) -> None:
        """Each running sequence's next token from its row of logits (n, V). Rows that
        only differ in temperature, top-k and top-p share those are sampled together, one
        batched `process_logits` and `sample` (each row still draws from its own
        generator), which gives every row exactly what it gets alone; rows with
        penalties, a logit bias or a grammar go one by one."""
        logits[:, self.valid :] = -np.inf
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(seqs):
            if s.done:
                continue
            if s.plain:
                p = s.params
                groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
            else:
                self._choose(s, logits[i])
        for (temperature, top_k, top_p), rows in groups.items():
            if rows[-1] - rows[0] == len(rows) - 1:  # neighbours (the usual case): a view
                raw = logits[rows[0] : rows[-1] + 1]  # (k, V), only read
            else:
                raw = logits[rows]
            work = raw
            if temperature > 0:
                none = np.zeros((len(rows), 0), np.int64)
                work = process_logits(raw, none, temperature=temperature, top_k=top_k, top_p=top_p)
            draws = _Draws([seqs[i].rng for i in rows])
            tokens = sample(work, draws, greedy=temperature == 0)
            for i, row, token in zip(rows, raw, tokens):
                s = seqs[i]
                p = s.params
                entry = self._logprob_entry(row, int(token), p.top_logprobs) if p.logprobs else None
                s.accept(int(token), self.token_bytes[int(token)], entry, self.block_size)

    def _choose(self, s: Sequence, logits: np.ndarray) -> None:
        """Sample s's next token from its raw logits (V,) and report it."""
        p = s.params
        logits[self.valid :] = -np.inf
        raw = logits
        work = logits[None]  # (1, V)
        if s.penalised and s.ids:
            counts = np.bincount(s.ids, minlength=logits.size)[: logits.size]
            work = work - p.presence_penalty * (counts > 0) - p.frequency_penalty * counts
            work = work.astype(np.float32)
        if p.logit_bias:
            work = work.copy()
            for t, b in p.logit_bias.items():
                work[0, t] += b
        mask = None if s.guide is None else s.guide.mask()
        context = _NO_CONTEXT
        if p.repetition_penalty != 1.0:
            context = np.asarray(s.prompt + s.ids, np.int64)[None]
        greedy = p.temperature == 0
        if not greedy or mask is not None or p.repetition_penalty != 1.0 or p.logit_bias:
            work = process_logits(
                work,
                context,
                temperature=p.temperature,
                top_k=p.top_k,
                top_p=p.top_p,
                repetition_penalty=p.repetition_penalty,
                mask=mask,
            )
        token = int(sample(work, s.rng, greedy=greedy)[0])
        entry = self._logprob_entry(raw, token, p.top_logprobs) if p.logprobs else None
        s.accept(token, self.token_bytes[token], entry, self.block_size)

    def _logprob_entry(self, logits: np.ndarray, token: int, top: int) -> dict:
        """OpenAI's entry for one token: the model's log-probability of it (its own
        distribution, before temperature and the other sampling rules, as OpenAI reports)
        and the `top` most likely tokens with theirs."""
        z = logits.astype(np.float64)
        z = z - z.max()
        logp = z - np.log(np.exp(z).sum())
        out = self._token_logprob(token, logp[token])
        if top:
            top = min(top, logp.size)
            best = np.argpartition(-logp, top - 1)[:top]  # the top ones, then in order
            best = best[np.lexsort((best, -logp[best]))]
            out["top_logprobs"] = [self._token_logprob(int(t), logp[t]) for t in best]
        else:
            out["top_logprobs"] = []
        return out

    def _token_logprob(self, token: int, logprob: float) -> dict:
        data = self.token_bytes[token]
        return {
            "token": data.decode("utf-8", errors="replace"),
            "logprob": max(float(logprob), -9999.0),  # JSON has no -inf
            "bytes": list(data),
        }


class _Draws:
    """`sample`'s generator for a batch of rows with generators of their own: row b's
    uniform number comes from row b's generator, as when it is sampled alone."""

    def __init__(self, rngs: list[np.random.Generator]) -> None:
        self.rngs = rngs

    def random(self, n: int) -> np.ndarray:
        return np.array([r.random() for r in self.rngs])
