"""One request's answer in OpenAI's shapes: the engine's events gathered into the JSON
body of `/v1/completions` or `/v1/chat/completions`, or turned into the chunks of its
server-sent events (`sse`). `npllm.serve.app` makes an `Answer` per request and feeds it
the events that have come since it last looked (`add`).

Streaming costs CPU per chunk on the same two cores as the decode step, so: the events a
stream has piled up (the event loop fell a step or more behind the engine) go out as one
chunk per choice, its tokens' text joined and their log-probability entries listed, as
OpenAI's chunks allow (`choices[0].logprobs.content` is a list); and a plain text chunk
is a prepared string with the text put in (`json.dumps` of the text alone), not a dict
dumped whole.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from npllm.serve.sequence import Event


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


_dumps = json.JSONEncoder().encode  # a string's JSON, without json.dumps's dispatch
_MARK_INDEX, _MARK_TEXT = 987654321, "\x00"  # stand-ins no real chunk holds there


class Answer:
    """Gathers one request's events into OpenAI's response body or stream chunks."""

    def __init__(self, server: Any, req: Any, prompts: list[list[int]], seqs: list) -> None:
        self.server, self.req, self.prompts, self.seqs = server, req, prompts, seqs
        self.chat = req.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion" if self.chat else "text_completion"
        n = len(seqs)
        self.texts = [""] * n
        self.logprobs: list[list[dict]] = [[] for _ in range(n)]
        self.reasons: list[str | None] = [None] * n
        self.error: str | None = None
        self.open = n
        # a text chunk without log-probabilities, prepared: `chunk`'s own text cut around
        # the choice's index and its text, which `add` puts in (head, index, text_key,
        # the text as JSON, tail)
        probe = sse(self.chunk(_MARK_INDEX, _MARK_TEXT, None, None))
        head, rest = probe.split(f'"index":{_MARK_INDEX}', 1)
        self.head = head + '"index":'
        self.text_key, self.tail = rest.split(_dumps(_MARK_TEXT), 1)

    @property
    def finished(self) -> bool:
        return self.open == 0

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)  # once per prompt, as OpenAI counts
        completion = sum(len(s.ids) for s in self.seqs)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def echo(self, index: int) -> str:
        if self.chat or not self.req.echo:
            return ""
        return self.req.prompt_texts[index // self.req.n]

    def add(self, events: list[Event], render: bool = True) -> str:
        """Record the events that have come; with `render`, the stream chunks they make,
        as server-sent-event text: per choice one chunk for its new text and log-prob
        entries, then one with its finish reason when it ended."""
        runs: dict[int, list] = {}  # choice -> [texts, entries, finish reason]
        for e in events:
            run = runs.get(e.index)
            if run is None:
                run = runs[e.index] = [[], [], None]
            run[0].append(e.text)
            if e.logprob is not None:
                run[1].append(e.logprob)
            if e.finish_reason is not None:
                run[2] = e.finish_reason
                if e.finish_reason == "error":
                    self.error = e.error or "the decode loop failed"
        out = []
        for i, (texts, entries, reason) in runs.items():
            text = "".join(texts)
            offset = len(self.texts[i])
            self.texts[i] += text
            self.logprobs[i] += entries
            if reason == "error":
                self.open = 0
                break
            if render and (text or entries):
                if entries:
                    out.append(sse(self.chunk(i, text, entries, None, offset)))
                else:
                    out.append(f"{self.head}{i}{self.text_key}{_dumps(text)}{self.tail}")
            if reason is not None:
                self.open -= 1
                self.reasons[i] = reason
                if render:
                    out.append(sse(self.chunk(i, None, None, reason)))
        return "".join(out)

    def base(self, obj: str) -> dict:
        name = self.server.model_name
        return {"id": self.id, "object": obj, "created": self.created, "model": name}

    def chunk(
        self,
        i: int,
        text: str | None,
        entries: list[dict] | None,
        reason: str | None,
        offset: int = 0,
    ) -> dict:
        """Choice i's chunk: its new `text` (from character `offset` of its generated text)
        with the log-probability `entries` of its tokens, or its finish `reason`."""
        out = self.base("chat.completion.chunk" if self.chat else "text_completion")
        if self.chat:
            delta = {} if text is None else {"content": text}
            lp = None if not entries else {"content": entries, "refusal": None}
            choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}
        else:
            lp = None if not entries else legacy_logprobs(entries, len(self.echo(i)) + offset)
            choice = {"index": i, "text": text or "", "logprobs": lp, "finish_reason": reason}
        out["choices"] = [choice]
        if self.req.include_usage:
            out["usage"] = None
        return out

    def first_chunks(self) -> list[dict]:
        """The role (chat) or the echoed prompt (completions) of each choice."""
        out = []
        for i in range(len(self.seqs)):
            if self.chat:
                c = self.chunk(i, "", None, None)
                c["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                out.append(c)
            elif self.echo(i):
                out.append(self.chunk(i, self.echo(i), None, None))
        return out

    def usage_chunk(self) -> dict:
        out = self.base("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = []
        out["usage"] = self.usage()
        return out

    def body(self) -> dict:
        out = self.base(self.object)
        choices = []
        for i in range(len(self.seqs)):
            entries = self.logprobs[i] if self.req.params.logprobs else None
            if self.chat:
                lp = None if entries is None else {"content": entries, "refusal": None}
                message = {"role": "assistant", "content": self.texts[i], "refusal": None}
                reason = self.reasons[i]
                choices.append(
                    {"index": i, "message": message, "logprobs": lp, "finish_reason": reason}
                )
            else:
                echo = self.echo(i)
                lp = None if entries is None else legacy_logprobs(entries, len(echo))
                choices.append(
                    {
                        "index": i,
                        "text": echo + self.texts[i],
                        "logprobs": lp,
                        "finish_reason": self.reasons[i],
                    }
                )
        out["choices"] = choices
        out["usage"] = self.usage()
        return out


def legacy_logprobs(entries: list[dict], offset: int) -> dict:
    """/v1/completions' logprobs: parallel lists, and the top ones as {token: logprob}."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }
