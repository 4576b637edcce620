"""Every constrained output is valid: hypothesis draws regexes and JSON Schemas, a randomly
initialised model samples at temperature 1.0, and independent judges check the text:
Python's `re.fullmatch` for regexes, `json` + `jsonschema` for schemas. 1,000+ drawn
cases in this file (each generating a batch of rows), every output must pass."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from npllm.constrain import json_grammar, regex_grammar, schema_grammar
from npllm.errors import GrammarError
from npllm.generate import generate, stream
from tests.constrain.conftest import tiny_decoder
from tests.constrain.strategies import regexes, schemas

CASES = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
ROWS = 4  # rows generated per drawn case
SAMPLING = st.sampled_from(
    [{}, {"top_k": 5}, {"top_p": 0.8}, {"repetition_penalty": 1.3}, {"greedy": True}]
)


def token_bytes(tokenizer, ids) -> bytes:
    if hasattr(tokenizer, "vocab"):
        return b"".join(tokenizer.vocab[i] for i in ids)
    return tokenizer.decode(ids).encode("utf-8")


def outputs(
    model,
    grammar,
    tokenizer,
    seed: int,
    sampling: dict,
    eos: int | None = None,
    in_hypothesis: bool = True,
):
    """The texts of ROWS rows sampled under `grammar` at temperature 1 (strictly decoded:
    invalid UTF-8 would raise), with a budget that leaves room past the shortest output.
    An end-of-sequence id may come only last."""
    budget = min(127, grammar.min_tokens + 20)  # the tiny models see 128 positions
    ids, _ = generate(
        model, np.zeros((ROWS, 1), np.int64), budget, grammar=grammar, seed=seed, **sampling
    )
    texts = []
    for row in ids:
        row = [int(i) for i in row if i >= 0]
        if eos is not None and eos in row:
            assert row.index(eos) == len(row) - 1, "end-of-sequence before the end"
            row = row[:-1]
        texts.append(token_bytes(tokenizer, row).decode("utf-8"))
        if in_hypothesis:
            event(f"output of {len(row) // 10 * 10}+ tokens")
    return texts


def judge_regex(pattern: str, texts: list[str]) -> None:
    for text in texts:
        assert re.fullmatch(pattern, text, re.ASCII), f"{text!r} does not match {pattern!r}"


def judge_schema(schema: dict, texts: list[str]) -> None:
    for text in texts:
        jsonschema.validate(json.loads(text), schema)


def grammar_or_skip(build):
    """Build a grammar; the drawn cases include unsatisfiable schemas, which must be
    refused (tested on their own in test_refusals) and are skipped here."""
    try:
        g = build()
    except GrammarError as e:
        # unsatisfiable, or (a drawn regex nesting bounded repeats) too many states
        assert re.search("never be satisfied|no text at all|passes .* states", str(e)), str(e)
        event(f"refused: {str(e)[:40]}")
        return None
    assume(g.min_tokens <= 100)
    return g


@CASES
@given(pattern=regexes, seed=st.integers(0, 2**16), sampling=SAMPLING)
def test_regex_bpe(pattern, seed, sampling, bpe, bpe_model):
    g = grammar_or_skip(lambda: regex_grammar(pattern, bpe))
    if g is not None:
        judge_regex(pattern, outputs(bpe_model, g, bpe, seed, sampling))


@pytest.fixture(scope="module")
def char_eos_model(chars):
    """A model with one id past the character vocabulary: an end-of-sequence token."""
    return tiny_decoder(chars.vocab_size + 1, seed=2)


@CASES
@given(pattern=regexes, seed=st.integers(0, 2**16), sampling=SAMPLING)
def test_regex_chars_with_eos(pattern, seed, sampling, chars, char_eos_model):
    eos = chars.vocab_size
    g = grammar_or_skip(lambda: regex_grammar(pattern, chars, eos + 1, eos_ids=[eos]))
    if g is not None:
        # the end-of-sequence token is allowed exactly in accepting states
        assert (g.masks[:, eos] == g.accept).all()
        judge_regex(pattern, outputs(char_eos_model, g, chars, seed, sampling, eos=eos))


@CASES
@given(schema=schemas, seed=st.integers(0, 2**16), sampling=SAMPLING)
def test_schema_bpe(schema, seed, sampling, bpe, bpe_model):
    g = grammar_or_skip(lambda: schema_grammar(schema, bpe))
    if g is not None:
        judge_schema(schema, outputs(bpe_model, g, bpe, seed, sampling))


@CASES
@given(schema=schemas, seed=st.integers(0, 2**16), sampling=SAMPLING)
def test_schema_chars(schema, seed, sampling, chars, char_model):
    g = grammar_or_skip(lambda: schema_grammar(schema, chars))
    if g is not None:
        judge_schema(schema, outputs(char_model, g, chars, seed, sampling))


@pytest.mark.parametrize("kind", ["object", "value"])
def test_any_json(kind, bpe, bpe_model):
    """json_object mode (and any JSON value): 60 rows, each parses; objects are objects."""
    g = json_grammar(kind, bpe)
    for seed in range(20):
        for text in outputs(bpe_model, g, bpe, seed, {}, in_hypothesis=False):
            value = json.loads(text)
            assert kind == "value" or isinstance(value, dict)


def test_budget_cut_outputs_are_complete(bpe, bpe_model):
    """Strings could run on forever; with only a few tokens left the mask closes them."""
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "array", "items": {"type": "number"}},
        },
        "required": ["a", "b"],
    }
    g = schema_grammar(schema, bpe)
    for budget in range(g.min_tokens, g.min_tokens + 6):
        ids, reason = generate(
            bpe_model, np.zeros((4, 1), np.int64), budget, grammar=g, seed=budget
        )
        for row in ids:
            judge_schema(schema, [token_bytes(bpe, [int(i) for i in row if i >= 0]).decode()])


def test_stream_and_generate_agree(bpe, bpe_model):
    """The same constrained ids one at a time; generation ends with "stop" when the
    output is complete."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    ids, reason = generate(bpe_model, [0], 40, json_schema=schema, tokenizer=bpe, seed=3)
    it = stream(bpe_model, [0], 40, json_schema=json.dumps(schema), tokenizer=bpe, seed=3)
    streamed = list(it)
    assert streamed == ids.tolist() and reason == "stop"
    assert json.loads(bpe.decode(streamed))["ok"] in (True, False)


def test_end_specials_only_where_the_output_is_complete(bpe):
    """With chat specials, `<|im_end|>` and `<|endoftext|>` are allowed exactly in
    accepting states and `<|im_start|>` never; a row ends with one of them."""
    tok = bpe.with_specials(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    model = tiny_decoder(tok.vocab_size, seed=4)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}}}
    g = schema_grammar(schema, tok)
    start, end, eot = (tok.special_id(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))
    assert (g.masks[:, end] == g.accept).all() and (g.masks[:, eot] == g.accept).all()
    assert not g.masks[:, start].any()
    ids, reason = generate(model, np.zeros((8, 1), np.int64), 40, grammar=g, seed=0)
    assert reason == "stop"
    for row in ids:
        row = [int(i) for i in row if i >= 0]
        assert row[-1] in (end, eot) and not set(row[:-1]) & {start, end, eot}
        judge_schema(schema, [token_bytes(tok, row[:-1]).decode()])


def test_grammar_argument_forms(bpe, bpe_model):
    """grammar="json_object" builds any-object mode from the tokenizer; a built Grammar
    is reused as is across calls."""
    ids, reason = generate(bpe_model, [0], 40, grammar="json_object", tokenizer=bpe, seed=1)
    assert isinstance(json.loads(token_bytes(bpe, ids.tolist()).decode()), dict)
    g = regex_grammar(r"(yes|no)!", bpe)
    for seed in range(3):
        ids, reason = generate(bpe_model, [0], 10, grammar=g, seed=seed)
        assert reason == "stop" and bpe.decode(ids.tolist()) in ("yes!", "no!")
    with pytest.raises(GrammarError, match="'json_object' or 'json'"):
        generate(bpe_model, [0], 10, grammar="yaml", tokenizer=bpe)
