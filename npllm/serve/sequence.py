"""One choice of a request as the serving engine runs it (`npllm.serve.engine`): its
sampling parameters, the events it reports, and its text.

Text: the generated ids are decoded as a whole after each token, so a BPE token that ends
inside a UTF-8 character shows once it is complete (U+FFFD is held back), and text that
could be the start of a stop string is held back until it is known not to be one. A stop
string ends the choice ("stop") and is not returned; so do the end-of-turn special tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npllm.constrain import Grammar


@dataclass
class SamplingParams:
    """What one choice is generated with (validated by `npllm.serve.protocol`)."""

    max_tokens: int  # already clipped to what fits the context window
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: Grammar | None = None


@dataclass
class Event:
    """What a sequence reports after a token: new text (maybe empty), the token's
    log-probability entry (when asked), and its finish reason once it is done ("stop",
    "length", or "error" with `error` saying what failed)."""

    index: int
    text: str = ""
    logprob: dict | None = None
    finish_reason: str | None = None
    error: str | None = None


class Sequence:
    """One choice being generated. `emit(Event)` is called from the engine's thread."""

    def __init__(
        self,
        index: int,
        prompt: list[int],
        params: SamplingParams,
        emit: Callable[[Event], None],
        stop_ids: frozenset[int],
        rng_seed: Any = None,
    ) -> None:
        self.index, self.prompt, self.params, self.emit = index, prompt, params, emit
        self.stop_ids = stop_ids
        self.rng = np.random.default_rng(rng_seed)
        self.guide = None if params.grammar is None else params.grammar.guide(1, params.max_tokens)
        self.ids: list[int] = []  # every generated token, end-of-turn included
        self.data = bytearray()  # the bytes of the shown tokens
        self.text = ""  # their text
        self.sent = 0  # characters of text already emitted
        self.finish_reason: str | None = None
        self.cancelled = False
        self.last = -1  # the token to feed at the next step
        self.penalised = params.presence_penalty != 0 or params.frequency_penalty != 0
        # sampled with temperature, top-k and top-p only (batched with its like)
        self.plain = (
            self.guide is None
            and not self.penalised
            and params.repetition_penalty == 1.0
            and not params.logit_bias
        )

    @property
    def position(self) -> int:
        """The position of `last` in the context."""
        return len(self.prompt) + len(self.ids) - 1

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled

    def accept(self, token: int, data: bytes, entry: dict | None, block_size: int) -> None:
        """Take the sampled `token` (its bytes `data`, its log-probability `entry`) and
        report the text it makes shown, or the choice's end."""
        p = self.params
        self.ids.append(token)
        self.last = token
        finished = False
        if self.guide is not None:
            finished = bool(self.guide.advance(np.array([token]))[0])
        if token in self.stop_ids:
            self.finish("stop", entry=None)
            return
        # the whole text again each time: a token may complete a character cut before
        self.data += data
        text = self.data.decode("utf-8", errors="replace")
        for stop in p.stop:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                text = text[:at]
                self.text = text
                self.finish("stop", entry)
                return
        self.text = text
        if finished:
            self.finish("stop", entry)
        elif len(self.ids) >= p.max_tokens or len(self.prompt) + len(self.ids) >= block_size:
            self.finish("length", entry)
        else:
            ready = len(text.rstrip("\ufffd"))
            ready -= _held_back(text[:ready], p.stop)
            new = text[self.sent : ready] if ready > self.sent else ""
            self.sent = max(self.sent, ready)
            if new or entry is not None:
                self.emit(Event(self.index, new, entry))

    def finish(self, reason: str, entry: dict | None) -> None:
        self.finish_reason = reason
        rest = self.text[self.sent :]
        self.sent = len(self.text)
        self.emit(Event(self.index, rest, entry, finish_reason=reason))


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return hold
