"""One request's answer in OpenAI's shapes: the engine's events gathered into the JSON
body of `/v1/completions` or `/v1/chat/completions`, or turned into the chunks of its
server-sent events (`sse`). `npllm.serve.app` makes an `Answer` per request and feeds it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from npllm.serve.sequence import Event


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


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

    def add(self, event: Event) -> list[dict]:
        """Record one event; the stream chunks it makes."""
        i = event.index
        self.texts[i] += event.text
        if event.logprob is not None:
            self.logprobs[i].append(event.logprob)
        chunks = []
        if event.text or event.logprob is not None:
            chunks.append(self.chunk(i, event.text, event.logprob, None))
        if event.finish_reason is not None:
            self.open -= 1
            if event.finish_reason == "error":
                self.error = event.error or "the decode loop failed"
                self.open = 0
                return chunks
            self.reasons[i] = event.finish_reason
            chunks.append(self.chunk(i, None, None, event.finish_reason))
        return chunks

    def base(self, obj: str) -> dict:
        name = self.server.model_name
        return {"id": self.id, "object": obj, "created": self.created, "model": name}

    def chunk(self, i: int, text: str | None, logprob: dict | None, reason: str | None) -> dict:
        out = self.base("chat.completion.chunk" if self.chat else "text_completion")
        if self.chat:
            delta = {} if text is None else {"content": text}
            lp = None if logprob is None else {"content": [logprob], "refusal": None}
            choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}
        else:
            offset = len(self.echo(i)) + len(self.texts[i]) - len(text or "")
            lp = None if logprob is None else legacy_logprobs([logprob], offset)
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
