"""Constrained decoding: outputs that always match a regex or validate against a JSON Schema.

The pipeline, one module a step:
1. `regex`: a regex subset -> syntax tree; characters -> UTF-8 byte ranges.
2. `automaton`: syntax tree -> NFA (built back to front) -> DFA over bytes, dead states
   pruned. `schema`: JSON Schema, or plain JSON, -> the same kind of DFA.
3. `index`: the DFA walked over the tokenizer's vocabulary -> for each state, the mask
   of allowed tokens and the state each one leads to (`Grammar`); `Guide` follows the
   rows of one generation, masking with the step's budget in mind.
Generation (`npllm.generate.stream`) sets the logits of disallowed tokens to -inf before
temperature, top-k and top-p (`npllm.sampling.process_logits`), and advances the guide
with each sampled token. Build a `Grammar` once and pass it as `grammar=` to reuse it.
"""

from __future__ import annotations

from typing import Any

from npllm.constrain.automaton import DFA, regex_dfa
from npllm.constrain.index import Grammar, Guide, end_ids, vocabulary_bytes
from npllm.constrain.regex import parse_regex
from npllm.constrain.schema import json_dfa, schema_dfa
from npllm.errors import ConfigError, GrammarError

__all__ = [
    "DFA",
    "Grammar",
    "Guide",
    "compile_grammar",
    "json_grammar",
    "regex_grammar",
    "schema_grammar",
]


def _tokens(tokenizer: Any, vocab_size: int | None, eos_ids: Any) -> tuple[list, list[int]]:
    tokens = vocabulary_bytes(tokenizer, vocab_size)
    return tokens, end_ids(tokenizer) if eos_ids is None else list(eos_ids)


def regex_grammar(
    pattern: str, tokenizer: Any, vocab_size: int | None = None, eos_ids: Any = None
) -> Grammar:
    """The outputs fully matching `pattern` (see `npllm.constrain.regex` for the subset),
    over `tokenizer`'s vocabulary (`vocab_size` ids, default the tokenizer's). `eos_ids`:
    the ids that end an output (default: the tokenizer's `<|im_end|>`/`<|endoftext|>`)."""
    tokens, eos = _tokens(tokenizer, vocab_size, eos_ids)
    return Grammar(regex_dfa(parse_regex(pattern)), tokens, eos, f"regex {pattern!r}")


def schema_grammar(
    schema: Any, tokenizer: Any, vocab_size: int | None = None, eos_ids: Any = None
) -> Grammar:
    """The JSON texts that validate against `schema` (a dict or a JSON string; see
    `npllm.constrain.schema` for the keywords), over `tokenizer`'s vocabulary."""
    tokens, eos = _tokens(tokenizer, vocab_size, eos_ids)
    return Grammar(schema_dfa(schema), tokens, eos, "the JSON schema")


def json_grammar(
    kind: str, tokenizer: Any, vocab_size: int | None = None, eos_ids: Any = None
) -> Grammar:
    """Any JSON object (`kind` "object") or any JSON value ("value")."""
    tokens, eos = _tokens(tokenizer, vocab_size, eos_ids)
    return Grammar(json_dfa(kind), tokens, eos, f"any JSON {kind}")


GRAMMAR_NAMES = {"json_object": "object", "json": "value"}


def compile_grammar(
    *,
    regex: str | None = None,
    json_schema: Any = None,
    grammar: Grammar | str | None = None,
    tokenizer: Any = None,
    vocab_size: int | None = None,
) -> Grammar | None:
    """The `Grammar` that generation arguments ask for, or None for no constraint.
    At most one of: `regex`, `json_schema` (a dict or JSON text), `grammar` (a built
    `Grammar`, or "json_object" / "json" for any JSON object / value). All but a built
    Grammar need the `tokenizer`; `vocab_size` is the model's."""
    given = [
        k
        for k, v in (("regex", regex), ("json_schema", json_schema), ("grammar", grammar))
        if v is not None
    ]
    if not given:
        return None
    if len(given) > 1:
        raise ConfigError(f"pass one of regex=, json_schema=, grammar=, not {' and '.join(given)}")
    if isinstance(grammar, Grammar):
        if vocab_size is not None and grammar.vocab_size != vocab_size:
            raise ConfigError(
                f"the grammar was built for {grammar.vocab_size} tokens, the model has "
                f"{vocab_size}; build it with vocab_size={vocab_size}"
            )
        return grammar
    if tokenizer is None:
        raise ConfigError(
            f"{given[0]}= needs tokenizer= (the model's tokenizer) to build its masks"
        )
    if grammar is not None:
        if grammar not in GRAMMAR_NAMES:
            raise GrammarError(
                f"grammar must be a Grammar, 'json_object' or 'json', got {grammar!r}"
            )
        return json_grammar(GRAMMAR_NAMES[grammar], tokenizer, vocab_size)
    if regex is not None:
        return regex_grammar(regex, tokenizer, vocab_size)
    return schema_grammar(json_schema, tokenizer, vocab_size)
