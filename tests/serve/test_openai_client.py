"""`npllm serve` through the official `openai` client with strict response validation:
chat and completions, streaming and not, exact usage, finish reasons, stop strings, seeds,
n > 1, logprobs, penalties, response_format judged by jsonschema, and the client's own
exception classes for errors. The chat model was trained in the test, so its greedy
replies are known text."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import openai
import pytest

from npllm.chat import encode_chat
from npllm.runs import load_run
from tests.serve.conftest import API_KEY, EXCHANGES


def client(server, **kw) -> openai.OpenAI:
    kw.setdefault("api_key", "unused")
    return openai.OpenAI(
        base_url=server.url + "/v1", _strict_response_validation=True, max_retries=0, **kw
    )


def user(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def tok(chat_run):
    return load_run(chat_run).tokenizer


def prompt_tokens(tok, messages) -> int:
    return len(encode_chat(tok, messages, add_generation_prompt=True)[0])


@pytest.mark.parametrize("question", sorted(EXCHANGES))
def test_chat_replies_are_the_trained_text_with_exact_usage(chat_server, tok, question):
    c = client(chat_server)
    r = c.chat.completions.create(
        model="tiny-chat", messages=user(question), temperature=0, user="someone", metadata={}
    )  # user and metadata are accepted and ignored
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == EXCHANGES[question]
    assert choice.finish_reason == "stop"
    assert r.object == "chat.completion" and r.model == "tiny-chat"
    # the reply's characters (a char tokenizer: one token each) and the closing <|im_end|>
    assert r.usage.completion_tokens == len(EXCHANGES[question]) + 1
    assert r.usage.prompt_tokens == prompt_tokens(tok, user(question))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_carries_role_then_text_then_finish_then_usage(chat_server, tok):
    c = client(chat_server)
    chunks = list(
        c.chat.completions.create(
            model="tiny-chat",
            messages=user("count"),
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == EXCHANGES["count"]
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(text) + 1
    assert chunks[-1].usage.prompt_tokens == prompt_tokens(tok, user("count"))
    assert all(ch.usage is None for ch in chunks[:-1])
    assert len({ch.id for ch in chunks}) == 1


def test_max_tokens_ends_with_length_and_counts_exactly(chat_server):
    c = client(chat_server)
    for kw in ({"max_tokens": 5}, {"max_completion_tokens": 5}):
        r = c.chat.completions.create(model="tiny-chat", messages=user("sky?"), temperature=0, **kw)
        assert r.choices[0].finish_reason == "length"
        assert r.choices[0].message.content == EXCHANGES["sky?"][:5]
        assert r.usage.completion_tokens == 5


def test_the_context_window_ends_a_reply_with_length(chat_server, tok):
    c = client(chat_server)
    # a prompt that leaves 3 tokens of the 64-token window
    messages = user("h" * (61 - prompt_tokens(tok, user(""))))
    assert prompt_tokens(tok, messages) == 61
    r = c.chat.completions.create(model="tiny-chat", messages=messages, temperature=0)
    assert r.usage.completion_tokens <= 3 and r.usage.total_tokens <= 64
    if r.choices[0].finish_reason == "length":
        assert r.usage.total_tokens == 64


def test_stop_strings_end_the_reply_and_are_not_returned(chat_server):
    c = client(chat_server)
    r = c.chat.completions.create(
        model="tiny-chat", messages=user("sky?"), temperature=0, stop=["is", "zzz"]
    )
    assert r.choices[0].message.content == "the sky "
    assert r.choices[0].finish_reason == "stop"
    # streamed: the text held back while it could be a stop string is never sent
    chunks = c.chat.completions.create(
        model="tiny-chat", messages=user("sky?"), temperature=0, stop="sky i", stream=True
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "the "


def test_a_seed_gives_the_same_sample_and_n_gives_n_choices(chat_server):
    c = client(chat_server)
    kw = dict(model="tiny-chat", messages=user("hi"), temperature=2.0, max_tokens=12)
    a = c.chat.completions.create(seed=7, n=3, **kw)
    b = c.chat.completions.create(seed=7, n=3, **kw)
    d = c.chat.completions.create(seed=8, n=3, **kw)
    texts = [ch.message.content for ch in a.choices]
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert texts == [ch.message.content for ch in b.choices]
    assert texts != [ch.message.content for ch in d.choices]
    assert len(set(texts)) > 1  # each choice samples on its own
    assert a.usage.completion_tokens == sum(len(t) for t in texts) + sum(
        ch.finish_reason == "stop" for ch in a.choices
    )
    # choice 0 of n=3 is the same as the one choice of n=1 with that seed
    one = c.chat.completions.create(seed=7, **kw)
    assert one.choices[0].message.content == texts[0]


def test_logprobs_are_the_models_and_top_logprobs_are_sorted(chat_server):
    c = client(chat_server)
    r = c.chat.completions.create(
        model="tiny-chat", messages=user("hi"), temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert "".join(e.token for e in content) == EXCHANGES["hi"]
    assert len(content) == r.usage.completion_tokens - 1  # all but the closing <|im_end|>
    for e in content:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert e.top_logprobs[0].token == e.token  # greedy: the chosen one is the top one
        assert e.logprob == pytest.approx(tops[0]) and e.logprob <= 0
        assert bytes(e.bytes).decode() == e.token
        assert sum(np.exp(tops)) <= 1 + 1e-6


def test_penalties_change_greedy_output(text_server):
    """On random weights the logits differ by far less than 2, so a penalty of 2 on every
    token already generated makes a greedy output repeat no token."""
    c = client(text_server, api_key=API_KEY)
    kw = dict(model="tiny-text", prompt="abc", temperature=0, max_tokens=12, logprobs=0)

    def tokens(**extra):
        return c.completions.create(**kw, **extra).choices[0].logprobs.tokens

    plain = tokens()
    assert len(set(plain)) < len(plain)  # untrained: it repeats itself
    for extra in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        out = tokens(**extra)
        assert len(set(out)) == len(out), extra
    assert tokens(frequency_penalty=-2.0) == [plain[0]] * 12  # a negative one: repeat
    # the extension, through the client's extra_body
    assert tokens(extra_body={"repetition_penalty": 5.0}) != plain


def test_completions_single_and_list_prompts_stream_and_not(chat_server, tok):
    c = client(chat_server)
    r = c.completions.create(model="tiny-chat", prompt=["hello", "the sky"], max_tokens=4, n=2)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == len("hello") + len("the sky")
    assert all(ch.finish_reason in ("stop", "length") for ch in r.choices)
    # OpenAI's completion stream sends finish_reason null until the last chunk, which the
    # client's own Completion type does not allow, so this stream is read without
    # strict validation (tests/serve/test_http.py checks its framing by hand)
    loose = openai.OpenAI(base_url=chat_server.url + "/v1", api_key="x", max_retries=0)
    chunks = list(
        loose.completions.create(
            model="tiny-chat", prompt="the sky", max_tokens=6, stream=True, temperature=0
        )
    )
    text = "".join(ch.choices[0].text for ch in chunks)
    whole = c.completions.create(model="tiny-chat", prompt="the sky", max_tokens=6, temperature=0)
    assert text == whole.choices[0].text and chunks[-1].choices[0].finish_reason == "length"


def test_completions_logprobs_and_echo(chat_server):
    c = client(chat_server)
    r = c.completions.create(
        model="tiny-chat", prompt="the", max_tokens=4, temperature=0, logprobs=2, echo=True
    )
    ch = r.choices[0]
    lp = ch.logprobs
    assert ch.text == "the" + "".join(lp.tokens)
    # every generated token but an ending <|im_end|> is listed, at its offset in the text
    assert len(lp.tokens) == r.usage.completion_tokens - (ch.finish_reason == "stop")
    assert lp.text_offset == list(range(3, 3 + len(lp.tokens)))
    assert all(len(t) == 2 for t in lp.top_logprobs)


SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 12},
        "sure": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["sky", "sea"]}, "maxItems": 2},
    },
    "required": ["answer", "sure"],
}


@pytest.mark.parametrize("seed", range(4))
def test_response_format_json_schema_always_validates(chat_server, seed):
    c = client(chat_server)
    r = c.chat.completions.create(
        model="tiny-chat",
        messages=user("sky?"),
        temperature=1.0,
        seed=seed,
        n=3,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
        },
    )
    for ch in r.choices:
        assert ch.finish_reason == "stop"
        jsonschema.validate(json.loads(ch.message.content), SCHEMA)


def test_response_format_json_object_streams_a_json_object(chat_server):
    c = client(chat_server)
    chunks = c.chat.completions.create(
        model="tiny-chat",
        messages=user("hi"),
        seed=3,
        max_tokens=40,
        response_format={"type": "json_object"},
        stream=True,
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert isinstance(json.loads(text), dict)


def test_errors_arrive_as_the_clients_exception_classes(chat_server, text_server):
    c = client(chat_server)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny-chat", messages=user("hi"), temperature=3)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny-chat", messages=user("hi " * 40))
    assert e.value.code == "context_length_exceeded" and "by " in e.value.message
    with pytest.raises(openai.AuthenticationError):
        client(text_server, api_key="wrong").models.list()
    with pytest.raises(openai.BadRequestError) as e:  # a text model has no chat template
        client(text_server, api_key=API_KEY).chat.completions.create(
            model="tiny-text", messages=user("hi")
        )
    assert "chat template" in e.value.message
    assert chat_server.healthy() and text_server.healthy()


def test_models_lists_the_served_model(chat_server, text_server):
    assert [m.id for m in client(chat_server).models.list()] == ["tiny-chat"]
    assert client(chat_server).models.retrieve("tiny-chat").id == "tiny-chat"
    assert [m.id for m in client(text_server, api_key=API_KEY).models.list()] == ["tiny-text"]
