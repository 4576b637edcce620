"""Streams whose tokens pile up (the event loop fell behind the engine) go out as one chunk
per choice, which the official client accepts with strict validation; and the load
benchmark's lean HTTP/1.1 client (benchmarks/serve.py) reads real streams as httpx does,
coalesced chunks included, counting tokens from the usage chunk."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from benchmarks.serve import HttpxClient, LeanClient, one_stream
from npllm.serve import app as app_module
from tests.serve.test_openai_client import client, user


@pytest.fixture
def lagging_loop(monkeypatch):
    """The server's event loop stalls 0.3 s at its first hand-over from the engine, which
    meanwhile runs the next steps: their tokens reach the handler together."""
    real, calls = app_module.deliver, []

    def slow(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            time.sleep(0.3)
        real(batch)

    monkeypatch.setattr(app_module, "deliver", slow)
    return calls


def test_piled_up_tokens_are_one_chunk_the_strict_client_accepts(chat_server, lagging_loop):
    chunks = list(
        client(chat_server).chat.completions.create(
            model="tiny-chat",
            messages=user("count"),
            temperature=0,
            logprobs=True,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert "".join(c.delta.content for c in texts) == "one two three"
    assert len(texts) < 13  # 13 tokens of text, fewer chunks: some carry several
    for c in texts:  # each chunk lists its tokens' logprob entries
        assert "".join(e.token for e in c.logprobs.content) == c.delta.content
    assert sum(len(c.logprobs.content) for c in texts) == 13
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 14  # the 13 and <|im_end|>


def streams(server, kind: str, n: int, tokens: int) -> list[dict]:
    async def run():
        c = LeanClient(server.url) if kind == "lean" else HttpxClient(server.url, n)
        try:
            jobs = [one_stream(c, tokens, seed, model="long", prompt="abc") for seed in range(n)]
            return await asyncio.gather(*jobs)
        finally:
            await c.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("lag", [False, True])
def test_the_lean_benchmark_client_reads_streams_as_httpx_does(long_server, lag, request):
    if lag:
        request.getfixturevalue("lagging_loop")
    lean, ref = streams(long_server, "lean", 3, 40), streams(long_server, "httpx", 3, 40)
    for a, b in zip(lean, ref):
        assert a["error"] is None and b["error"] is None
        assert a["done"] and a["finish"] == "length" and a["tokens"] == 40
        assert "".join(a["texts"]) == "".join(b["texts"])  # same seed, same text
        assert len("".join(a["texts"])) == 40  # one character a token
        assert len(a["chunks"]) == len(a["texts"]) and a["chunks"] == sorted(a["chunks"])
    if lag:  # the stalled loop: the streams' tokens came in fewer chunks than tokens
        assert sum(len(a["chunks"]) for a in lean) < 3 * 40


def test_the_lean_client_reports_an_http_error(long_server):
    async def run():
        c = LeanClient(long_server.url)
        try:
            return await one_stream(c, 5, 0, model="no-such-model", prompt="abc")
        finally:
            await c.aclose()

    out = asyncio.run(run())
    assert "HTTP 404" in out["error"] and not out["done"] and out["tokens"] == 0


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("usage", [True, False])
def test_the_prepared_text_chunk_is_the_chunk_itself(kind, usage):
    """A plain text chunk is written from a template cut out of `Answer.chunk`'s own
    output; filled in, it is that output to the byte (quotes, newlines, non-ASCII text)."""
    from types import SimpleNamespace

    from npllm.serve.answer import Answer, _dumps, sse

    req = SimpleNamespace(kind=kind, include_usage=usage)
    answer = Answer(SimpleNamespace(model_name="m"), req, [[1], [2]], [object(), object()])
    text = 'h\u00e9 "quoted"\n\\'
    made = answer.head + "1" + answer.text_key + _dumps(text) + answer.tail
    assert made == sse(answer.chunk(1, text, None, None))


@pytest.mark.parametrize("interval", [0.0, 0.01])
def test_the_stream_interval_groups_tokens_but_not_the_first(interval):
    """With a stream interval, a stream's tokens are handed to the event loop at most that
    often, as one chunk: its first token alone at once (time to first token), then groups,
    the end at once. The chunks that hold tokens are at most 1 + elapsed / interval + 1; a
    small model makes 400 tokens in far less time than 400 intervals."""
    from tests.serve.conftest import Running, long_app

    app = long_app(stream_interval=interval)
    assert app.state.server.stream_interval == interval
    srv = Running(app)
    try:
        t0 = time.perf_counter()
        (out,) = streams(srv, "lean", 1, 400)
        elapsed = time.perf_counter() - t0
    finally:
        srv.stop()
    assert out["error"] is None and out["done"] and out["tokens"] == 400
    sizes = [len(t) for t in out["texts"]]  # one character a token
    assert sum(sizes) == 400
    if interval:  # (with none, tokens that piled up while the loop was busy go together)
        assert sizes[0] == 1
        assert len(sizes) <= 2 + elapsed / interval, (sizes, elapsed)
        gaps = [b - a for a, b in zip(out["chunks"][1:], out["chunks"][2:-1])]
        assert statistics.median(gaps) > interval / 2, gaps  # groups come an interval apart
    else:
        assert len(sizes) > 2 + elapsed / 0.05  # the same stream, many more chunks
