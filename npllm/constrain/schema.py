"""JSON Schema (a subset) and plain JSON to a byte automaton.

Scalars are regexes of `npllm.constrain.regex` (read them below: they are the grammar);
objects and arrays are wired by hand into the NFA, back to front, so that shared parts
are built once (`npllm.constrain.automaton`).

Supported keywords: `type` (object, array, string, number, integer, boolean, null, or a
list of them), `properties`, `required`, `additionalProperties` (true or false: only the
listed properties are ever written, which is valid either way), `enum`, `const`, `items`,
`minItems`/`maxItems`, `minLength`/`maxLength`, `anyOf`; annotations (`title`,
`description`, `default`, `examples`, `$schema`, `$id`, `$comment`) are ignored. Any
other keyword is refused with a `GrammarError` naming it, rather than silently ignored:
an output would then not be guaranteed to validate.

What the automaton writes:
- properties in the schema's order; required ones always, optional ones or not;
- at most one space after `,` and `:` (bounded whitespace: it can never loop);
- a schema without `type` (or `{}`), an object without `properties`, an array without
  `items`: any JSON value, object or array, nested at most `max_depth` levels deep.
A schema no output can satisfy (minLength > maxLength, an empty enum, a required
property whose own schema is unsatisfiable, ...) is refused with the reasons found.
"""

from __future__ import annotations

import json
from typing import Any

from npllm.constrain.automaton import DFA, NFA, determinize
from npllm.constrain.regex import Repeat, Seq, literal, parse_regex
from npllm.errors import GrammarError

WHITESPACE = parse_regex(r"[ ]?")
NULL = literal("null")
BOOLEAN = parse_regex(r"true|false")
INTEGER = parse_regex(r"-?(0|[1-9][0-9]*)")
NUMBER = parse_regex(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
# one character of a JSON string: anything but ", \ and control characters, or an escape
# (\u escapes of surrogate halves are left out: alone they are not characters)
STRING_CHAR = parse_regex(
    r'[^"\\\x00-\x1f]|\\(["\\/bfnrt]|u([0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))'
)
QUOTE = literal('"')
STRING = Seq((QUOTE, Repeat(STRING_CHAR, 0, None), QUOTE))

MAX_DEPTH = 4
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment"}
SUPPORTED = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "const",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "anyOf",
}
KEYWORDS_OF = {  # the keywords that only constrain values of one type
    "properties": "object",
    "required": "object",
    "additionalProperties": "object",
    "items": "array",
    "minItems": "array",
    "maxItems": "array",
    "minLength": "string",
    "maxLength": "string",
}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _has_type(value: Any, t: str) -> bool:
    """JSON Schema's type test (an integer-valued float is an integer)."""
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        return isinstance(value, list)
    return isinstance(value, dict)


class _Compiler:
    """Writes a schema into an NFA. `value(schema, out, path, depth)` returns the state
    that starts the schema's values, leading on to `out`; a schema with no value at all
    returns a state with no way out (its reason is noted in `self.empty`)."""

    def __init__(self, max_depth: int) -> None:
        self.nfa = NFA()
        self.max_depth = max_depth
        self.empty: list[str] = []

    def nowhere(self, path: str, why: str) -> int:
        self.empty.append(f"{path}: {why}")
        return self.nfa.state()

    def seq(self, parts: list, out: int) -> int:
        """Regex nodes and ready-made entry states, one after the other, on to `out`.
        An int in `parts` must be last: it is where the sequence goes on from there."""
        for part in reversed(parts):
            out = part if isinstance(part, int) else self.nfa.build(part, out)
        return out

    def value(self, schema: Any, out: int, path: str, depth: int) -> int:
        if schema is True or schema == {}:
            return self.any_value(out, depth)
        if schema is False:
            return self.nowhere(path, "the schema false admits no value")
        if not isinstance(schema, dict):
            raise GrammarError(f"{path}: a schema must be an object or a boolean, got {schema!r}")
        for key in schema:
            if key not in SUPPORTED and key not in ANNOTATIONS:
                raise GrammarError(
                    f"{path}: JSON Schema keyword {key!r} is not supported; supported: "
                    f"{', '.join(sorted(SUPPORTED))}"
                )
        types = schema.get("type", list(TYPES))
        types = [types] if isinstance(types, str) else list(types)
        for t in types:
            if t not in TYPES:
                raise GrammarError(f"{path}: unknown type {t!r}; use one of {', '.join(TYPES)}")
        if "enum" in schema or "const" in schema:
            return self.constants(schema, types, out, path)
        if "anyOf" in schema:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            if set(rest) - ANNOTATIONS:
                raise GrammarError(
                    f"{path}: anyOf beside other keywords ({', '.join(sorted(rest))}) is not "
                    "supported; move them into each option"
                )
            options = schema["anyOf"]
            if not isinstance(options, list) or not options:
                return self.nowhere(path, "anyOf needs a non-empty list of schemas")
            return self.nfa.fork(
                [self.value(o, out, f"{path}.anyOf[{i}]", depth) for i, o in enumerate(options)]
            )
        if "type" not in schema:
            for key in schema:
                if key in KEYWORDS_OF:
                    raise GrammarError(
                        f"{path}: {key!r} needs a 'type' ({KEYWORDS_OF[key]!r}) beside it"
                    )
            return self.any_value(out, depth)
        if not types:
            return self.nowhere(path, "an empty list of types admits no value")
        return self.nfa.fork([self.typed(t, schema, out, path, depth) for t in types])

    def constants(self, schema: dict, types: list[str], out: int, path: str) -> int:
        others = set(schema) - ANNOTATIONS - {"enum", "const", "type"}
        if others:
            raise GrammarError(
                f"{path}: enum/const beside {', '.join(sorted(others))} is not supported; "
                "list only values that satisfy the rest"
            )
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list):
            raise GrammarError(f"{path}: enum must be a list of values, got {values!r}")
        if "const" in schema and "enum" in schema and schema["const"] not in schema["enum"]:
            values = []
        values = [v for v in values if any(_has_type(v, t) for t in types)]
        if not values:
            return self.nowhere(path, "no value of enum/const has an allowed type")
        return self.nfa.fork([self.nfa.build(literal(_dumps(v)), out) for v in values])

    def typed(self, t: str, schema: dict, out: int, path: str, depth: int) -> int:
        if t == "null":
            return self.nfa.build(NULL, out)
        if t == "boolean":
            return self.nfa.build(BOOLEAN, out)
        if t == "integer":
            return self.nfa.build(INTEGER, out)
        if t == "number":
            return self.nfa.build(NUMBER, out)
        if t == "string":
            lo, hi = self.bounds(schema, "minLength", "maxLength", path)
            if hi is not None and lo > hi:
                return self.nowhere(path, f"minLength {lo} > maxLength {hi}")
            return self.nfa.build(Seq((QUOTE, Repeat(STRING_CHAR, lo, hi), QUOTE)), out)
        if depth >= self.max_depth:
            return self.nowhere(path, f"nesting deeper than max_depth {self.max_depth}")
        if t == "array":
            lo, hi = self.bounds(schema, "minItems", "maxItems", path)
            if hi is not None and lo > hi:
                return self.nowhere(path, f"minItems {lo} > maxItems {hi}")
            return self.array(schema.get("items", True), lo, hi, out, path, depth + 1)
        ap = schema.get("additionalProperties", True)
        if not isinstance(ap, bool):
            raise GrammarError(
                f"{path}: additionalProperties must be true or false here (a schema for "
                "the extra properties is not supported)"
            )
        if "properties" not in schema:
            if schema.get("required"):
                raise GrammarError(
                    f"{path}: 'required' names properties; list them in 'properties'"
                )
            if ap is False:
                return self.nfa.build(literal("{}"), out)
            return self.any_object(out, depth + 1)
        return self.object(schema, out, path, depth + 1)

    @staticmethod
    def bounds(schema: dict, lo_key: str, hi_key: str, path: str) -> tuple[int, int | None]:
        lo, hi = schema.get(lo_key, 0), schema.get(hi_key)
        for key, v in ((lo_key, lo), (hi_key, hi)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise GrammarError(f"{path}: {key} must be an integer >= 0, got {v!r}")
        return lo, hi

    def object(self, schema: dict, out: int, path: str, depth: int) -> int:
        """`{`, the properties in order (required ones always, optional ones or not,
        separated by `,`), `}`. `after[j]` is the state once property j is written; each
        property's "key: value" is built once, leading to its `after` state, and every
        earlier state that may be followed by it links to it."""
        props = schema["properties"]
        if not isinstance(props, dict):
            raise GrammarError(f"{path}: properties must be an object of schemas")
        names = list(props)
        required = schema.get("required", [])
        if not isinstance(required, list) or any(r not in props for r in required):
            raise GrammarError(
                f"{path}: required must list names from properties, got {required!r}"
            )
        n = len(names)
        nfa = self.nfa
        close = nfa.build(literal("}"), out)
        after = [nfa.state() for _ in range(n)]
        entry = []  # "key": value of property m, on to after[m]
        for m, name in enumerate(names):
            key = Seq((literal(_dumps(name)), literal(":"), WHITESPACE))
            n_empty = len(self.empty)
            value = self.value(props[name], after[m], f"{path}.{name}", depth)
            if len(self.empty) > n_empty and name not in required:
                del self.empty[n_empty:]  # an optional property that can never be written
            entry.append(nfa.build(key, value))
        comma = [nfa.build(Seq((literal(","), WHITESPACE)), e) for e in entry]

        def successors(j: int, links: list[int]) -> list[int]:
            """From 'property j written' (j = -1: none yet): any later property up to and
            including the next required one; the closing brace if none is required."""
            nexts = []
            for m in range(j + 1, n):
                nexts.append(links[m])
                if names[m] in required:
                    return nexts
            return nexts + [close]

        for j in range(n):
            nfa.eps[after[j]] += successors(j, comma)
        return self.seq([literal("{"), WHITESPACE, nfa.fork(successors(-1, entry))], out)

    def array(self, items: Any, lo: int, hi: int | None, out: int, path: str, depth: int) -> int:
        """`[`, between lo and hi items separated by `,`, `]`. Back to front: after the
        first item, the other k - 1 as NFA.build writes a repeat (a loop when unbounded,
        else nested optional copies), each copy leading to the rest."""
        nfa = self.nfa
        if hi == 0:
            return nfa.build(literal("[]"), out)
        close = nfa.build(literal("]"), out)
        sep = Seq((literal(","), WHITESPACE))

        def then_item(to: int) -> int:  # ", item", on to `to`
            return nfa.build(sep, self.value(items, to, f"{path}.items", depth))

        more = max(lo - 1, 0)  # items required after the first
        if hi is None:
            rest = nfa.state()
            nfa.eps[rest] += [then_item(rest), close]
        else:
            rest = close
            for _ in range(hi - 1 - more):
                rest = nfa.fork([then_item(rest), close])
        for _ in range(more):
            rest = then_item(rest)
        first = self.value(items, rest, f"{path}.items", depth)
        return self.seq([literal("["), WHITESPACE, first if lo else nfa.fork([first, close])], out)

    def any_value(self, out: int, depth: int) -> int:
        """Any JSON value, containers at most max_depth levels deep."""
        options = [self.nfa.build(node, out) for node in (NULL, BOOLEAN, NUMBER, STRING)]
        if depth < self.max_depth:
            options += [
                self.any_object(out, depth + 1),
                self.array(True, 0, None, out, "", depth + 1),
            ]
        return self.nfa.fork(options)

    def any_object(self, out: int, depth: int) -> int:
        """`{`, then `}` or "key": value pairs separated by `,`, then `}`."""
        nfa = self.nfa
        close = nfa.build(literal("}"), out)
        loop = nfa.state()  # after a pair
        pair = nfa.build(Seq((STRING, literal(":"), WHITESPACE)), self.any_value(loop, depth))
        nfa.eps[loop] += [nfa.build(Seq((literal(","), WHITESPACE)), pair), close]
        return self.seq([literal("{"), WHITESPACE, nfa.fork([pair, close])], out)


def schema_dfa(schema: Any, max_depth: int = MAX_DEPTH) -> DFA:
    """The DFA of the JSON texts that validate against `schema` (a dict, or a JSON
    string) and that this module writes. Raises GrammarError for an unsupported keyword
    or an unsatisfiable schema."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
    c = _Compiler(max_depth)
    start = c.value(schema, c.nfa.final, "schema", 0)
    dfa = determinize(c.nfa, start)
    if dfa.n_states == 0:
        raise GrammarError(
            "the JSON schema can never be satisfied: " + "; ".join(c.empty or ["no value fits"])
        )
    return dfa


def json_dfa(kind: str = "object", max_depth: int = MAX_DEPTH) -> DFA:
    """Any JSON object (`kind` "object", OpenAI's json_object mode) or any JSON value
    ("value"), nested at most `max_depth` levels."""
    if kind not in ("object", "value"):
        raise GrammarError(f"json kind must be 'object' or 'value', got {kind!r}")
    return schema_dfa({"type": "object"} if kind == "object" else {}, max_depth)
