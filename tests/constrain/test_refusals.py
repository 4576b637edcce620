"""What cannot be honoured is refused before generation, with one clear message: an
unsupported regex construct or schema keyword (named), a grammar nothing satisfies, a
vocabulary that cannot spell it, a budget too short for it. And `npllm sample --regex /
--json-schema` end to end, with exit code 2 and one line for bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from npllm import cli
from npllm.constrain import compile_grammar, regex_grammar, schema_grammar
from npllm.data import prepare
from npllm.errors import ConfigError, GrammarError
from npllm.generate import generate, stream
from npllm.tokenizers import CharTokenizer
from tests.cli.conftest import TINY


@pytest.mark.parametrize(
    "pattern, named",
    [
        (r"a(?=b)", "look-arounds"),
        (r"(a)\1", "escape \\1"),
        (r"\bword", "escape \\b"),
        (r"a*?", "lazy"),
        (r"a{3,1}", "max < min"),
        (r"(ab", "missing ')'"),
        (r"ab)", "unbalanced ')'"),
        (r"[abc", "missing ']'"),
        (r"*a", "nothing to repeat"),
        (r"a^b", "'^' is only supported"),
        (r"[[:alpha:]]", "POSIX"),
        (r"a{x}", "escape it as \\{"),
    ],
)
def test_unsupported_regex_is_named(pattern, named, chars):
    with pytest.raises(GrammarError, match=re.escape(named)):
        regex_grammar(pattern, chars)


@pytest.mark.parametrize(
    "schema, named",
    [
        ({"type": "string", "pattern": "a+"}, "'pattern'"),
        ({"type": "integer", "minimum": 0}, "'minimum'"),
        ({"type": "string", "format": "date"}, "'format'"),
        ({"$ref": "#/$defs/x"}, "'$ref'"),
        ({"oneOf": [{"type": "null"}]}, "'oneOf'"),
        ({"type": "object", "properties": {"a": {"allOf": []}}}, "'allOf'"),
        ({"type": "object", "additionalProperties": {"type": "string"}}, "additionalProperties"),
        ({"type": "object", "properties": {}, "required": ["a"]}, "required must list"),
        ({"type": "date"}, "unknown type 'date'"),
        ({"enum": [1], "minimum": 0}, "minimum"),
    ],
)
def test_unsupported_schema_keyword_is_named(schema, named, chars):
    with pytest.raises(GrammarError, match=re.escape(named)):
        schema_grammar(schema, chars)


@pytest.mark.parametrize(
    "schema, reason",
    [
        ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength 5 > maxLength 2"),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems 3 > maxItems 1"),
        ({"enum": []}, "no value of enum/const"),
        ({"type": "integer", "enum": ["a", None]}, "no value of enum/const"),
        ({"const": 1, "enum": [2]}, "no value of enum/const"),
        ({"anyOf": []}, "anyOf needs"),
        (False, "admits no value"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string", "maxLength": -0, "minLength": 1}},
                "required": ["a"],
            },
            "schema.a: minLength 1 > maxLength 0",
        ),
    ],
)
def test_unsatisfiable_schema_is_refused(schema, reason, chars):
    with pytest.raises(GrammarError, match="never be satisfied.*" + re.escape(reason)):
        schema_grammar(schema, chars)


def test_unsatisfiable_optional_property_is_left_out(chars):
    """An optional property no value fits is never written; the schema still works."""
    g = schema_grammar(
        {"type": "object", "properties": {"a": {"enum": []}, "b": {"type": "null"}}}, chars
    )
    assert g.dfa.matches(b'{"b":null}') and not g.dfa.matches(b'{"a":')


def test_regex_without_any_match_is_refused(chars):
    with pytest.raises(GrammarError, match="matches no text at all"):
        regex_grammar(r"a[^\s\S]b", chars)


def test_vocabulary_that_cannot_spell_is_refused():
    letters = CharTokenizer(list("abc "))
    with pytest.raises(GrammarError, match="vocabulary cannot spell"):
        schema_grammar({"type": "object"}, letters)
    with pytest.raises(GrammarError, match="vocabulary cannot spell"):
        regex_grammar(r"a+d", letters)


def test_budget_too_short_is_refused_before_generation(chars, char_model):
    with pytest.raises(GrammarError, match="needs at least 6 tokens; max_new_tokens is 5"):
        stream(char_model, [0], 5, regex=r"abcdef", tokenizer=chars)  # eager: no next()


def test_argument_errors(chars, char_model):
    with pytest.raises(ConfigError, match="one of regex=, json_schema=, grammar="):
        compile_grammar(regex="a", json_schema={}, tokenizer=chars)
    with pytest.raises(ConfigError, match="needs tokenizer="):
        generate(char_model, [0], 5, regex="a")
    with pytest.raises(GrammarError, match="not valid JSON"):
        generate(char_model, [0], 5, json_schema="{nope", tokenizer=chars)
    g = regex_grammar("a", chars, vocab_size=chars.vocab_size + 3)
    with pytest.raises(ConfigError, match="built for"):
        generate(char_model, [0], 5, grammar=g)


# -- the CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained character-level run over a corpus that has JSON's characters."""
    root = tmp_path_factory.mktemp("crun")
    rng = np.random.default_rng(0)
    lines = [
        json.dumps({"name": " ".join(rng.choice(["ann", "bo", "cy"], 2)), "n": int(i)})
        for i in rng.integers(0, 100, 200)
    ]
    (root / "corpus.txt").write_text("\n".join(lines) + " true false null -.eE+[]\\")
    prepare(str(root / "corpus.txt"), root / "data")
    argv = ["train", "--data", str(root / "data"), "--out", str(root / "run"), *TINY]
    assert cli.main([*argv, "--max-iters", "10"]) == 0
    return root


def sample(root, capsys, *flags) -> tuple[int, str, str]:
    argv = ["sample", "--run", str(root / "run"), "--prompt", "{", "--max-new-tokens", "60"]
    code = cli.main([*argv, "--seed", "3", *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_json_schema_cli(run, capsys):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 6}, "n": {"type": "integer"}},
        "required": ["name", "n"],
    }
    (run / "schema.json").write_text(json.dumps(schema))
    code, out, _ = sample(run, capsys, "--json-schema", str(run / "schema.json"))
    assert code == 0
    value = json.loads(out[1:])  # after the prompt "{"
    assert set(value) == {"name", "n"} and isinstance(value["n"], int)


def test_sample_regex_cli(run, capsys):
    code, out, _ = sample(run, capsys, "--regex", r"(ann|bo) [0-9]{2}", "--stream")
    assert code == 0 and re.fullmatch(r"\{(ann|bo) [0-9]{2}\n", out)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--json-schema", "/nonexistent/s.json"], "cannot read --json-schema"),
        (["--regex", "a(?=b)"], "look-arounds"),
        (["--regex", "[%&]+"], "vocabulary cannot spell"),
    ],
)
def test_sample_cli_refusals(run, capsys, flags, message):
    code, out, err = sample(run, capsys, *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
