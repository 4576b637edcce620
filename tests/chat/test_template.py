"""ChatML rendering, the assistant mask, and the conversation checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllm.chat import (
    CHAT_SPECIALS,
    IM_END,
    IM_START,
    check_messages,
    encode_chat,
    render,
    require_chat_tokens,
)
from npllm.errors import DataError
from npllm.tokenizers import BPETokenizer, CharTokenizer

CONV = [
    {"role": "system", "content": "You are Pip."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye!"},
]
TEXT = render(CONV)
BPE = BPETokenizer.train([TEXT.replace(IM_START, "").replace(IM_END, "")] * 3, 300, CHAT_SPECIALS)
CHAR = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyzBHPY!?. <>|_\n", CHAT_SPECIALS)


def test_render_is_chatml():
    assert TEXT == (
        "<|im_start|>system\nYou are Pip.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\nBye!<|im_end|>\n"
    )
    assert render(CONV[:2], add_generation_prompt=True).endswith(
        "Hi!<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("tok", [BPE, CHAR], ids=["bpe", "char"])
def test_encode_chat_ids_decode_to_the_template_and_mask_only_assistant_output(tok):
    ids, mask = encode_chat(tok, CONV)
    assert tok.decode(ids) == TEXT
    assert ids == tok.encode(TEXT, allowed_special="all")
    assert ids.count(tok.specials[IM_START]) == 5 and ids.count(tok.specials[IM_END]) == 5
    # the masked tokens are the assistant contents and their closing <|im_end|>, in order
    learned = [i for i, m in zip(ids, mask) if m]
    end = tok.specials[IM_END]
    assert learned == tok.encode("Hello.") + [end] + tok.encode("Bye!") + [end]
    gen, gmask = encode_chat(tok, CONV[:2], add_generation_prompt=True)
    assert tok.decode(gen) == render(CONV[:2], add_generation_prompt=True)
    assert not any(gmask)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["<|im_end|>", "<|im_start|>", "<|endoftext|>", "a", "|>", "\n"])))
def test_message_text_never_becomes_a_special_token(parts):
    content = "".join(parts)
    conv = [{"role": "user", "content": content}, {"role": "assistant", "content": content}]
    for tok in (BPE, CHAR):
        ids, mask = encode_chat(tok, conv)
        assert tok.decode(ids) == render(conv)
        # exactly the template's specials: two messages, two starts, two ends
        specials = [i for i in ids if i in tok.special_ids]
        s, e = tok.specials[IM_START], tok.specials[IM_END]
        assert specials == [s, e, s, e]
        assert sum(mask) == len(tok.encode(content)) + 1


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ("hi", "non-empty list"),
        (["hi"], "message 1 is a str"),
        ([{"role": "bot", "content": "x"}], "role 'bot'; use one of system, user, assistant"),
        ([{"role": "user", "content": 3}], '"content" string'),
        ([{"role": "user", "content": "x"}], "no assistant message"),
        (
            [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
            "only the first message",
        ),
    ],
)
def test_check_messages_names_the_problem(messages, match):
    with pytest.raises(DataError, match=match):
        check_messages(messages)


def test_a_tokenizer_without_chat_tokens_is_refused():
    with pytest.raises(DataError, match="prepare --chat"):
        require_chat_tokens(CharTokenizer.from_text("abc"))
