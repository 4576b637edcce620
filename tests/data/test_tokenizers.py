"""Tokenizers: round trips (hypothesis, arbitrary Unicode for BPE, the corpus alphabet for
chars), BPE training checked against a naive re-counting reference, save/load, errors."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllm.errors import DataError
from npllm.tokenizers import (
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    CharTokenizer,
    _merge,
    load_tokenizer,
)

SAMPLE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    "Naïve café, 東京 2024 — émigrés' snake_case don't   tabs\tand 😀 emoji!!\n"
) * 3
BPE = BPETokenizer.train(SAMPLE, 330)


def naive_bpe_merges(text: str, vocab_size: int) -> list[tuple[int, int]]:
    """Reference: recount every pair from scratch before each merge."""
    words = Counter(re.findall(GPT2_SPLIT_PATTERN, text))
    seqs = {w: list(w.encode("utf-8")) for w in words}
    merges: list[tuple[int, int]] = []
    while len(merges) < vocab_size - 256:
        counts: Counter = Counter()
        for w, f in words.items():
            for p in zip(seqs[w], seqs[w][1:]):
                counts[p] += f
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        if counts[pair] < 2:
            break
        merges.append(pair)
        seqs = {w: _merge(s, pair, 255 + len(merges)) for w, s in seqs.items()}
    return merges


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_bpe_round_trips_arbitrary_unicode(s):
    ids = BPE.encode(s)
    assert all(0 <= i < BPE.vocab_size for i in ids)
    assert BPE.decode(ids) == s


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet="ab c\nd'é😀_1", max_size=200), st.integers(256, 300))
def test_bpe_training_matches_naive_reference_and_compresses(text, vocab_size):
    tok = BPETokenizer.train(text, vocab_size)
    assert tok.merges == naive_bpe_merges(text, vocab_size)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) <= len(text.encode("utf-8"))


@settings(max_examples=40, deadline=None)
@given(st.text())
def test_presplit_covers_every_character(s):
    assert "".join(re.findall(GPT2_SPLIT_PATTERN, s)) == s


def test_bpe_learns_frequent_words_and_saves_as_json(tmp_path):
    assert BPE.vocab_size == 330
    assert len(BPE.encode(" speak")) == 1  # occurs 6 times: merged into one token
    path = tmp_path / "tok.json"
    BPE.save(path)
    again = load_tokenizer(path)
    assert isinstance(again, BPETokenizer) and again.merges == BPE.merges
    assert again.encode(SAMPLE) == BPE.encode(SAMPLE)
    with pytest.raises(DataError, match="not a char tokenizer"):
        CharTokenizer.load(path)


def test_bpe_stops_when_no_pair_repeats():
    assert BPETokenizer.train("abcdef", 1000).vocab_size == 256
    with pytest.raises(DataError, match="at least 256"):
        BPETokenizer.train("abc", 100)


def test_bpe_decode_replaces_a_cut_multibyte_character():
    first_byte = "é".encode()[0]  # a sample can stop in the middle of a character
    assert BPE.decode([*BPE.encode("ab"), first_byte]) == "ab\ufffd"


CHAR = CharTokenizer.from_text(SAMPLE)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=CHAR.chars))
def test_char_round_trips_on_the_corpus_alphabet(s):
    ids = CHAR.encode(s)
    assert len(ids) == len(s)
    assert CHAR.decode(ids) == s


def test_char_vocabulary_is_the_sorted_alphabet(tmp_path):
    assert CHAR.chars == sorted(set(SAMPLE))
    CHAR.save(tmp_path / "c.json")
    again = CharTokenizer.load(tmp_path / "c.json")
    assert again.chars == CHAR.chars


def test_char_unknown_characters_give_a_clear_error():
    with pytest.raises(DataError, match=r"'Z'.*'~'|not in the tokenizer's alphabet"):
        CHAR.encode("Zebra~")
    with pytest.raises(DataError, match="token ids"):
        CHAR.decode([CHAR.vocab_size])


def test_load_tokenizer_rejects_bad_files(tmp_path):
    with pytest.raises(DataError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        load_tokenizer(bad)
    bad.write_text('{"type": "wordpiece"}')
    with pytest.raises(DataError, match="unknown tokenizer type"):
        load_tokenizer(bad)


# Special tokens: fixed ids after the ordinary vocabulary, produced from text only where
# the caller allows them, one id each, kept through save/load.
CHAT = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BPE_SP = BPETokenizer.train(SAMPLE, 333, specials=CHAT)
CHAR_SP = CharTokenizer.from_text(SAMPLE, specials=CHAT)
# text made of the corpus alphabet, with the specials' own characters and text mixed in
pieces = st.lists(st.sampled_from([*CHAT, "<|", "|>", "im_end", "<", "|", ">", " a", "\n"]))
char_text = st.lists(st.one_of(st.text(alphabet=CHAR.chars, max_size=8), pieces.map("".join)))


def test_specials_take_the_ids_after_the_ordinary_vocabulary():
    assert BPE_SP.vocab_size == 333 and BPE_SP.base_vocab_size == 330
    assert BPE_SP.merges == BPE.merges  # the specials' ids are not learned merges
    assert BPE_SP.specials == {"<|endoftext|>": 330, "<|im_start|>": 331, "<|im_end|>": 332}
    assert CHAR_SP.specials["<|im_end|>"] == len(CHAR.chars) + 2
    assert CHAR_SP.vocab_size == len(CHAR.chars) + 3
    assert BPE_SP.special_id("<|im_end|>") == 332
    with pytest.raises(DataError, match="no special token '<|tool|>'"):
        BPE_SP.special_id("<|tool|>")
    # adding a user's own token keeps every earlier id
    more = BPE_SP.with_specials(["<|tool|>", "<|im_end|>"])
    assert more.specials == {**BPE_SP.specials, "<|tool|>": 333}
    assert more.encode("x<|tool|>", allowed_special={"<|tool|>"})[-1] == 333


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=12), pieces.map("".join))).map("".join))
def test_bpe_specials_round_trip_and_user_text_never_makes_one(s):
    plain = BPE_SP.encode(s)
    assert not set(plain) & BPE_SP.special_ids  # ordinary text, whatever it contains
    assert plain == BPE.encode(s)  # and exactly as a tokenizer without specials encodes it
    assert BPE_SP.decode(plain) == s
    allowed = BPE_SP.encode(s, allowed_special="all")
    assert BPE_SP.decode(allowed) == s
    # each allowed special occurrence is one id, never split or merged with its neighbours
    n = sum(allowed.count(i) for i in BPE_SP.special_ids)
    assert n == len(re.findall("|".join(map(re.escape, CHAT)), s))


@settings(max_examples=60, deadline=None)
@given(char_text.map("".join))
def test_char_specials_round_trip_and_user_text_never_makes_one(s):
    tok = CharTokenizer.from_text(SAMPLE + "<|>_imendtx", specials=CHAT)
    plain = tok.encode(s)
    assert len(plain) == len(s) and not set(plain) & tok.special_ids
    assert tok.decode(plain) == s
    allowed = tok.encode(s, allowed_special={"<|im_end|>"})
    assert tok.decode(allowed) == s
    assert allowed.count(tok.specials["<|im_end|>"]) == s.count("<|im_end|>")
    assert tok.specials["<|im_start|>"] not in allowed  # not allowed, so never produced


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.text(alphabet="<|>abc_", min_size=1, max_size=8), unique=True, max_size=4),
    st.sampled_from(["char", "bpe"]),
    st.text(alphabet="<|>abc_ \n", max_size=40),
)
def test_specials_survive_save_and_load(tmp_path_factory, specials, kind, s):
    tok = (
        CharTokenizer.from_text("<|>abc_ \n", specials)
        if kind == "char"
        else BPETokenizer.train("abc abc <|a|> " * 3, 270, specials)
    )
    path = tmp_path_factory.mktemp("tok") / "tok.json"
    tok.save(path)
    again = load_tokenizer(path)
    assert again.specials == tok.specials and again.vocab_size == tok.vocab_size
    for allowed in ((), "all"):
        ids = tok.encode(s, allowed_special=allowed)
        assert again.encode(s, allowed_special=allowed) == ids
        assert again.decode(ids) == s


def test_special_token_errors(tmp_path):
    with pytest.raises(DataError, match="not special tokens"):
        BPE_SP.encode("a", allowed_special={"<|nope|>"})
    with pytest.raises(DataError, match="distinct"):
        CharTokenizer("ab", specials=["<|x|>", "<|x|>"])
    with pytest.raises(DataError, match="non-empty"):
        BPETokenizer([], specials=[""])
    with pytest.raises(DataError, match="token ids"):
        BPE_SP.decode([333])
    with pytest.raises(DataError, match="token ids"):
        CHAR_SP.decode([-1])  # a negative id is an error, not the last token
    d = BPE_SP.to_dict()
    d["specials"][0][1] = 7  # an id that collides with a byte
    (tmp_path / "t.json").write_text(__import__("json").dumps(d))
    with pytest.raises(DataError, match="malformed tokenizer"):
        load_tokenizer(tmp_path / "t.json")
