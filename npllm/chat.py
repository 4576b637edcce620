"""Chat models: the ChatML template, conversation checks, and the assistant mask.

A conversation is a list of `{"role", "content"}` messages, roles system, user and
assistant (the fine-tuning format OpenAI's tools and most others read: one
`{"messages": [...]}` per JSONL line). ChatML renders each message as

    <|im_start|>{role}\\n{content}<|im_end|>\\n

and a reply is prompted with `<|im_start|>assistant\\n`. `<|im_start|>` and `<|im_end|>`
are special tokens (`npllm.tokenizers`): the template inserts their ids, while roles and
contents are encoded as ordinary text, so a message that contains the text `<|im_end|>`
cannot close a turn. `encode_chat` returns the ids and a mask that is true on the tokens
the model must learn to produce: each assistant message's content and its closing
`<|im_end|>` (not the header before it, not the newline after it). Training counts the
loss on those tokens only (`npllm.chat_data.get_chat_batch`), so the model learns to answer
and to stop, not to imitate its users.

`ChatSession` holds a conversation with a model for `npllm chat` (history, context-window
trimming, streamed replies); `stop_rate` measures how often greedy replies end with
`<|im_end|>` (`npllm chat --eval`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from npllm.errors import DataError

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
CHAT_SPECIALS = (ENDOFTEXT, IM_START, IM_END)
ROLES = ("system", "user", "assistant")

Message = dict[str, str]


def check_messages(messages: Any, need_assistant: bool = True) -> list[Message]:
    """The conversation as a list of {"role", "content"} dicts, or a DataError saying
    what is wrong with it (without a location: the caller adds the line number)."""
    if not isinstance(messages, list) or not messages:
        raise DataError('"messages" must be a non-empty list of {"role", "content"} objects')
    out = []
    for k, m in enumerate(messages):
        where = f"message {k + 1}"
        if not isinstance(m, dict):
            raise DataError(f'{where} is a {type(m).__name__}, not a {{"role", "content"}} object')
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"{where} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f'{where} ({role}) needs a "content" string')
        if role == "system" and k > 0:
            raise DataError(f"{where} is a system message; only the first message may be one")
        out.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise DataError("the conversation has no assistant message, so nothing to learn from")
    return out


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The ChatML text of a conversation (for reading; `encode_chat` makes the ids)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def require_chat_tokens(tokenizer: Any) -> None:
    missing = [t for t in (IM_START, IM_END) if t not in tokenizer.specials]
    if missing:
        raise DataError(
            f"the tokenizer has no {' or '.join(missing)} token, so it cannot hold a chat; "
            "train on data prepared with `npllm prepare --chat`"
        )


def encode_message(tokenizer: Any, message: Message) -> tuple[list[int], list[bool]]:
    """Ids and assistant mask of one rendered message (see the module's docstring)."""
    start, end = tokenizer.special_id(IM_START), tokenizer.special_id(IM_END)
    head = [start, *tokenizer.encode(message["role"] + "\n")]
    body = tokenizer.encode(message["content"])  # ordinary text: never a special id
    tail = tokenizer.encode("\n")
    learn = message["role"] == "assistant"
    ids = head + body + [end] + tail
    mask = [False] * len(head) + [learn] * (len(body) + 1) + [False] * len(tail)
    return ids, mask


def generation_prompt(tokenizer: Any) -> list[int]:
    """The ids that open an assistant turn: `<|im_start|>assistant\\n`."""
    return [tokenizer.special_id(IM_START), *tokenizer.encode("assistant\n")]


def encode_chat(
    tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """(ids, mask) of a conversation in ChatML: mask[i] is true when ids[i] is
    assistant output (content or closing `<|im_end|>`). With `add_generation_prompt`,
    ends with `<|im_start|>assistant\\n` (mask false) for the model to continue."""
    require_chat_tokens(tokenizer)
    ids: list[int] = []
    mask: list[bool] = []
    for m in messages:
        i, k = encode_message(tokenizer, m)
        ids += i
        mask += k
    if add_generation_prompt:
        p = generation_prompt(tokenizer)
        ids += p
        mask += [False] * len(p)
    return ids, mask


class ChatSession:
    """A multi-turn conversation with a model, as `npllm chat` holds it.

    The history is kept as ids: the system message, then one id list per exchange (the
    user's message and the reply exactly as the model produced it, closed with
    `<|im_end|>`). Before each reply the oldest exchanges are dropped until the prompt
    and `reserve` tokens of reply fit the context window (`trimmed` counts them; the
    system message stays). `reply(text)` streams the answer as text pieces; it ends at
    `<|im_end|>` (`finish_reason` "stop") or after `max_new_tokens` ("length"). Closing
    the generator early (Ctrl-C) keeps what was said so far as the reply."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        system: str | None = None,
        max_new_tokens: int = 256,
        **sampling: Any,
    ) -> None:
        from npllm.decoder import as_decoder

        require_chat_tokens(tokenizer)
        # one decoder for the whole session (it settles its threading on the first reply)
        self.model, self.tokenizer = as_decoder(model), tokenizer
        self.block_size = model.config.block_size
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.system_ids = (
            encode_message(tokenizer, {"role": "system", "content": system})[0] if system else []
        )
        self.end = tokenizer.special_id(IM_END)
        # a model may also end a turn by starting the next message or a new document
        self.stops = [[self.end]] + [
            [tokenizer.specials[t]] for t in (IM_START, ENDOFTEXT) if t in tokenizer.specials
        ]
        self.reserve = min(max_new_tokens, self.block_size // 4)
        self.reset()

    def reset(self) -> None:
        self.turns: list[list[int]] = []
        self.trimmed = 0
        self.finish_reason: str | None = None

    def prompt(self, user: str) -> list[int]:
        """The ids to continue for a reply to `user`, the oldest exchanges dropped to fit."""
        user_ids = encode_message(self.tokenizer, {"role": "user", "content": user})[0]
        tail = user_ids + generation_prompt(self.tokenizer)
        budget = self.block_size - self.reserve
        system = self.system_ids
        if len(system) + len(tail) > budget:
            system = []
        if len(tail) > budget:
            raise DataError(
                f"the message is {len(user_ids)} tokens, too long for the model's context of "
                f"{self.block_size} tokens with room for a reply; shorten it"
            )
        used = len(system) + len(tail)
        keep = 0
        for turn in reversed(self.turns):
            if used + len(turn) > budget:
                break
            used += len(turn)
            keep += 1
        dropped = len(self.turns) - keep
        if dropped:
            self.turns = self.turns[dropped:]
            self.trimmed += dropped
        return system + [i for t in self.turns for i in t] + tail

    def reply(self, user: str) -> Iterator[str]:
        """Stream the reply to `user` as text pieces (see the class docstring)."""
        from npllm.generate import stream

        context = self.prompt(user)
        user_ids = encode_message(self.tokenizer, {"role": "user", "content": user})[0]
        new: list[int] = []
        shown = 0
        self.finish_reason = None
        it = stream(self.model, context, self.max_new_tokens, stop=self.stops, **self.sampling)
        try:
            while True:
                try:
                    token = next(it)
                except StopIteration as fin:
                    self.finish_reason = fin.value
                    break
                if self.finish_reason is None and [token] in self.stops:
                    continue  # the closing token: not part of the text
                new.append(token)
                # a BPE token may end inside a UTF-8 character: hold back U+FFFD
                text = self.tokenizer.decode(new)
                ready = len(text.rstrip("\ufffd"))
                if ready > shown:
                    yield text[shown:ready]
                    shown = ready
            text = self.tokenizer.decode(new)
            if len(text) > shown:
                yield text[shown:]
        finally:
            # the reply as said (all of it, or up to Ctrl-C), closed as the template does
            reply_ids = generation_prompt(self.tokenizer) + new + [self.end]
            self.turns.append(user_ids + reply_ids + self.tokenizer.encode("\n"))


def first_prompt(messages: Sequence[Message]) -> tuple[list[Message], str | None]:
    """The messages before the first assistant message, and that message's content."""
    for k, m in enumerate(messages):
        if m["role"] == "assistant":
            return list(messages[:k]), m["content"]
    return list(messages), None


def stop_rate(
    model: Any, tokenizer: Any, conversations: Sequence[Sequence[Message]], max_new_tokens: int
) -> dict[str, Any]:
    """Greedy replies to the first user turn of each conversation: how many end with
    `<|im_end|>` before `max_new_tokens`, and each (prompt, reply, reference)."""
    from npllm.decoder import as_decoder
    from npllm.generate import generate

    model = as_decoder(model)
    end = tokenizer.special_id(IM_END)
    rows = []
    for conv in conversations:
        prompt, reference = first_prompt(conv)
        ids, _ = encode_chat(tokenizer, prompt, add_generation_prompt=True)
        new, reason = generate(
            model, ids[-model.config.block_size :], max_new_tokens, greedy=True, stop=end
        )
        ended = reason == "stop"
        reply = tokenizer.decode(new[:-1] if ended else new)
        rows.append({"prompt": prompt, "reply": reply, "reference": reference, "ended": ended})
    n = len(rows)
    stopped = sum(r["ended"] for r in rows)
    return {"n": n, "stopped": stopped, "rate": stopped / n if n else 0.0, "rows": rows}
