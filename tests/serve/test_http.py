"""`npllm serve` over raw HTTP (httpx): every error in OpenAI's shape with its status and
the parameter it names, the server serving on after each; the SSE framing byte for byte;
a client that disconnects mid-stream freeing its row at once; /health answering while
the model works; continuous batching (a request that arrives joins the running batch
and finishes first); seeded output independent of what else runs; a fault inside the
decode loop answered with a 500 and survived."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from npllm.serve.app import STATIC
from tests.serve.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def post(server, path, body=None, content=None, headers=None, timeout=60):
    kw = {"content": content} if content is not None else {"json": body}
    return httpx.post(server.url + path, headers=headers, timeout=timeout, **kw)


def check_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


HI = [{"role": "user", "content": "hi"}]
BAD_CHAT = [
    ({"messages": HI, "temperature": "hot"}, "temperature"),
    ({"messages": HI, "temperature": 2.5}, "temperature"),
    ({"messages": HI, "top_p": 0}, "top_p"),
    ({"messages": HI, "top_k": -1}, "top_k"),
    ({"messages": HI, "n": 0}, "n"),
    ({"messages": HI, "n": 1000}, "n"),
    ({"messages": HI, "max_tokens": 0}, "max_tokens"),
    ({"messages": HI, "max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": HI, "stop": ""}, "stop"),
    ({"messages": HI, "seed": "x"}, "seed"),
    ({"messages": HI, "presence_penalty": 3}, "presence_penalty"),
    ({"messages": HI, "frequency_penalty": None, "logprobs": "yes"}, "logprobs"),
    ({"messages": HI, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": HI, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"messages": HI, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": HI, "logit_bias": {"99999": 1}}, "logit_bias"),
    ({"messages": HI, "tools": []}, "tools"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ({"messages": HI, "response_format": {"type": "xml"}}, "response_format"),
    (
        {
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}},
            },
        },
        "response_format",
    ),
    (
        {  # a schema whose shortest output does not fit max_tokens
            "messages": HI,
            "max_tokens": 2,
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"const": "abc"}}},
        },
        "max_tokens",
    ),
    ({"messages": HI, "model": 7}, "model"),
]


@pytest.mark.parametrize("body, param", BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_a_bad_parameter_is_a_400_naming_it_and_the_server_serves_on(chat_server, body, param):
    err = check_error(post(chat_server, CHAT, body), 400, param)
    assert err["type"] == "invalid_request_error"
    assert chat_server.healthy()


MALFORMED = [b"{not json", b"[1, 2]", b"\xff\xfe", b"", b'{"prompt": "a", "max_tokens": 1']


@pytest.mark.parametrize("content", MALFORMED, ids=str)
def test_malformed_json_is_a_400(chat_server, content):
    for path in (CHAT, COMPLETIONS):
        check_error(post(chat_server, path, content=content), 400, None, "invalid_json")
    assert chat_server.healthy()


def test_bad_completion_prompts_are_400s(chat_server):
    for body in ({}, {"prompt": 3}, {"prompt": []}, {"prompt": [[]]}, {"prompt": [10**6]}):
        check_error(post(chat_server, COMPLETIONS, body), 400, "prompt")
    check_error(post(chat_server, COMPLETIONS, {"prompt": "a", "suffix": "b"}), 400, "suffix")
    check_error(post(chat_server, COMPLETIONS, {"prompt": "a", "best_of": 3}), 400, "best_of")
    check_error(post(chat_server, COMPLETIONS, {"prompt": "a", "logprobs": 99}), 400, "logprobs")
    assert chat_server.healthy()


def test_a_prompt_over_the_context_window_is_a_400_saying_by_how_much(text_server):
    # block_size 32: a prompt must leave room for one generated token
    r = post(text_server, COMPLETIONS, {"prompt": "a" * 40}, headers=AUTH)
    err = check_error(r, 400, "prompt", "context_length_exceeded")
    assert "32 tokens" in err["message"] and "40 tokens" in err["message"]
    assert "by 9 tokens" in err["message"]
    r = post(text_server, COMPLETIONS, {"prompt": "a" * 31, "max_tokens": 50}, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"  # the window, not max_tokens
    assert body["usage"] == {"prompt_tokens": 31, "completion_tokens": 1, "total_tokens": 32}
    assert text_server.healthy()


def test_the_api_key_is_required_and_checked(text_server):
    body = {"prompt": "ab", "max_tokens": 2}
    check_error(post(text_server, COMPLETIONS, body), 401, None, "missing_api_key")
    wrong = {"Authorization": "Bearer sk-wrong"}
    check_error(post(text_server, COMPLETIONS, body, headers=wrong), 401, None, "invalid_api_key")
    basic = {"Authorization": f"Basic {API_KEY}"}
    check_error(post(text_server, COMPLETIONS, body, headers=basic), 401)
    check_error(httpx.get(text_server.url + "/v1/models"), 401)
    assert post(text_server, COMPLETIONS, body, headers=AUTH).status_code == 200
    assert text_server.healthy()  # /health needs no key


def test_unknown_models_and_paths_are_404s(chat_server):
    body = {"model": "gpt-4o", "messages": HI}
    err = check_error(post(chat_server, CHAT, body), 404, "model", "model_not_found")
    assert "tiny-chat" in err["message"]
    check_error(httpx.get(chat_server.url + "/v1/models/gpt-4o"), 404, "model")
    check_error(post(chat_server, "/v1/embeddings", {"input": "x"}), 404)
    check_error(httpx.get(chat_server.url + "/v1/nothing"), 404)
    check_error(httpx.get(chat_server.url + CHAT), 405)
    assert chat_server.healthy()


def test_the_page_and_every_script_it_imports_are_served_with_their_types(chat_server):
    page = httpx.get(chat_server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    todo, seen = re.findall(r'<script type="module" src="([\w.]+)"', page.text), set()
    assert todo == ["app.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        r = httpx.get(f"{chat_server.url}/{name}")
        assert r.status_code == 200, name
        # browsers run an ES module only when it comes with a JavaScript type
        assert r.headers["content-type"].split(";")[0] == "text/javascript", name
        todo += re.findall(r'^import [^;]* from "\./([\w.]+)";$', r.text, re.M)
    assert seen == {p.name for p in STATIC.glob("*.js")}  # every script is reached


def test_a_body_over_the_limit_is_a_413_even_without_a_length(text_server):
    big = {"prompt": "a", "stop": ["x" * 5000]}
    check_error(post(text_server, COMPLETIONS, big, headers=AUTH), 413, None, "request_too_large")

    def chunks():  # chunked transfer: no Content-Length to refuse it by
        for _ in range(10):
            yield b" " * 1000

    r = post(text_server, COMPLETIONS, content=chunks(), headers=AUTH)
    check_error(r, 413, None, "request_too_large")
    assert text_server.healthy()


def sse_events(response) -> list[str]:
    """The raw events of a stream, checking that each is one `data: ...` line and a blank."""
    raw = b"".join(response.iter_bytes()).decode()
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    for e in events:
        assert e.startswith("data: ") and "\n" not in e
    return [e[len("data: ") :] for e in events]


def test_sse_framing_of_a_chat_stream(chat_server):
    body = {
        "messages": [{"role": "user", "content": "count"}],
        "temperature": 0,
        "stream": True,
        "n": 2,
        "logprobs": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", chat_server.url + CHAT, json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2 * 14
    for i in range(2):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "stop"
        texts = [m["delta"]["content"] for m in mine[1:-1]]
        assert "".join(texts) == "one two three"
        # a token a chunk, or the tokens that piled up while the event loop was busy: each
        # chunk lists the logprob entries of its tokens, whose text is the chunk's
        entries = [m["logprobs"]["content"] for m in mine[1:-1]]
        assert ["".join(e["token"] for e in es) for es in entries] == texts
        assert sum(len(es) for es in entries) == 13


def test_sse_framing_of_a_completion_stream(text_server):
    body = {"prompt": "ab", "max_tokens": 5, "stream": True, "seed": 1}
    with httpx.stream("POST", text_server.url + COMPLETIONS, json=body, headers=AUTH) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    choices = [c["choices"][0] for c in chunks]
    assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["length"]
    # five one-character tokens, one a chunk or several together (the loop fell behind)
    assert len("".join(c["text"] for c in choices[:-1])) == 5 and choices[-1]["text"] == ""
    assert all(c["text"] for c in choices[:-1]) and all(c["index"] == 0 for c in choices)


def test_a_client_that_disconnects_frees_its_row_at_once(long_server):
    engine = long_server.engine
    before = engine.cancelled
    body = {"prompt": "abc", "max_tokens": 2000, "stream": True, "seed": 0}
    with httpx.stream("POST", long_server.url + COMPLETIONS, json=body, timeout=60) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
    # the connection is closed; the row leaves long before 2000 tokens would be done
    deadline = time.time() + 5
    while engine.cancelled == before or engine.load != (0, 0):
        assert time.time() < deadline, "the disconnected stream kept its row"
        time.sleep(0.01)
    assert long_server.healthy()


def test_a_disconnected_plain_request_is_cancelled_too(long_server):
    engine = long_server.engine
    before = engine.cancelled
    body = {"prompt": "abc", "max_tokens": 2000, "seed": 0}
    with pytest.raises(httpx.ReadTimeout):
        post(long_server, COMPLETIONS, body, timeout=0.3)
    deadline = time.time() + 5
    while engine.cancelled == before or engine.load != (0, 0):
        assert time.time() < deadline, "the abandoned request kept its row"
        time.sleep(0.01)


def stream_text(server, body, out, key, times=None):
    """Read a completion stream into out[key] (its text); times[key]: when it ended."""
    with httpx.stream("POST", server.url + COMPLETIONS, json=body, timeout=120) as r:
        text = ""
        for e in sse_events(r)[:-1]:
            text += json.loads(e)["choices"][0]["text"]
    out[key] = text
    if times is not None:
        times[key] = time.perf_counter()


def test_a_new_request_joins_the_running_batch_and_health_answers_meanwhile(long_server):
    engine = long_server.engine
    out, times = {}, {}
    long = {"prompt": "abc", "max_tokens": 1500, "stream": True, "seed": 1}
    a = threading.Thread(target=stream_text, args=(long_server, long, out, "a", times))
    a.start()
    while engine.load[0] == 0:
        time.sleep(0.005)
    steps0 = engine.steps.copy()
    # /health answers at once while the long request decodes
    t0 = time.perf_counter()
    r = httpx.get(long_server.url + "/health", timeout=10)
    assert time.perf_counter() - t0 < 1.0 and r.json()["running"] == 1
    short = {"prompt": "xyz", "max_tokens": 20, "stream": True, "seed": 2}
    b = threading.Thread(target=stream_text, args=(long_server, short, out, "b", times))
    b.start()
    b.join()
    a.join()
    assert len(out["b"]) == 20 and len(out["a"]) == 1500
    # b did not wait for a: it joined the batch and left it while a went on
    assert times["b"] < times["a"]
    # b's tokens came in a's steps: 19 steps of two rows (its first token is the prefill's)
    assert (engine.steps - steps0)[2] >= 19


def test_seeded_output_does_not_depend_on_what_else_runs(long_server):
    def body(seed, n=1):
        return {"prompt": "hello", "max_tokens": 60, "seed": seed, "n": n, "stream": True}

    alone = {}
    stream_text(long_server, body(5), alone, "x")
    out = {}
    threads = [
        threading.Thread(target=stream_text, args=(long_server, body(k, 3), out, k))
        for k in range(4)
    ]
    threads.insert(2, threading.Thread(target=stream_text, args=(long_server, body(5), out, "x")))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["x"] == alone["x"]


def test_a_fault_in_the_decode_loop_is_a_500_and_the_server_recovers(text_server, monkeypatch):
    dec = text_server.engine.dec
    real = dec.step_rows
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("simulated kernel fault")

    monkeypatch.setattr(dec, "step_rows", broken)
    body = {"prompt": "ab", "max_tokens": 5}
    err = check_error(post(text_server, COMPLETIONS, body, headers=AUTH), 500)
    assert err["type"] == "server_error" and "simulated kernel fault" in err["message"]
    with httpx.stream(
        "POST", text_server.url + COMPLETIONS, json={**body, "stream": True}, headers=AUTH
    ) as r:
        events = sse_events(r)
    assert json.loads(events[-2])["error"]["type"] == "server_error"
    monkeypatch.setattr(dec, "step_rows", real)
    r = post(text_server, COMPLETIONS, body, headers=AUTH)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    assert calls and text_server.healthy()
