"""Hypothesis strategies: regexes of the supported subset and JSON Schemas of the
supported keywords, both rendered as users write them."""

from __future__ import annotations

from hypothesis import strategies as st

REGEX_ATOMS = st.sampled_from(
    [
        "a",
        "b",
        "x",
        " ",
        "0",
        "7",
        r"\.",
        "-",
        '"',
        r"\{",
        "é",
        "[a-c]",
        "[^ab]",
        "[0-9]",
        "[x-z_ ]",
        r"\d",
        r"\w",
        r"\s",
        r"\W",
        ".",
        "the",
        "()",
    ]
)
QUANTIFIERS = st.sampled_from(["*", "+", "?", "{2}", "{1,3}", "{0,2}", "{2,}", "{0}"])


def _regex_combinators(children):
    pairs = st.tuples(children, children)
    return st.one_of(
        pairs.map(lambda t: t[0] + t[1]),
        pairs.map(lambda t: f"(?:{t[0]}|{t[1]})"),
        pairs.map(lambda t: f"({t[0]}|{t[1]}|)"),
        st.tuples(children, QUANTIFIERS).map(lambda t: f"(?:{t[0]}){t[1]}"),
    )


# regexes with at most 12 atoms (nested bounded repeats stay a few hundred DFA states),
# sometimes written with the anchors that change nothing for a whole match
regexes = st.tuples(st.booleans(), st.recursive(REGEX_ATOMS, _regex_combinators, max_leaves=7)).map(
    lambda t: f"^{t[1]}$" if t[0] else t[1]
)

NAMES = st.sampled_from(["name", "age", "id", "tags", "ok", "x", "ünï", "a b", 'q"'])
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(-1e3, 1e3, allow_nan=False).map(lambda f: round(f, 3)),
    st.text(st.sampled_from('ab é"\\\n'), max_size=4),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda c: st.one_of(st.lists(c, max_size=2), st.dictionaries(NAMES, c, max_size=2)),
    max_leaves=4,
)


@st.composite
def _string_schema(draw):
    s = {"type": "string"}
    lo = draw(st.none() | st.integers(0, 4))
    hi = draw(st.none() | st.integers(0, 8))
    if lo is not None:
        s["minLength"] = lo
    if hi is not None:
        s["maxLength"] = max(hi, lo or 0)
    return s


SCALAR_SCHEMAS = st.one_of(
    st.sampled_from(
        [{"type": t} for t in ("null", "boolean", "integer", "number", "string")]
        + [{"type": ["integer", "null"]}, {"type": ["string", "boolean"], "maxLength": 3}]
    ),
    _string_schema(),
    st.lists(JSON_VALUES, min_size=1, max_size=4).map(lambda v: {"enum": v}),
    JSON_VALUES.map(lambda v: {"const": v}),
)


@st.composite
def _object_schema(draw, children):
    names = draw(st.lists(NAMES, min_size=0, max_size=4, unique=True))
    props = {n: draw(children) for n in names}
    required = [n for n in names if draw(st.booleans())]
    s = {"type": "object", "properties": props}
    if required:
        s["required"] = required
    if draw(st.booleans()):
        s["additionalProperties"] = False
    return s


@st.composite
def _array_schema(draw, children):
    s = {"type": "array", "items": draw(children)}
    lo = draw(st.none() | st.integers(0, 2))
    hi = draw(st.none() | st.integers(0, 3))
    if lo is not None:
        s["minItems"] = lo
    if hi is not None:
        s["maxItems"] = max(hi, lo or 0)
    return s


def _schema_combinators(children):
    return st.one_of(
        _object_schema(children),
        _array_schema(children),
        st.lists(children, min_size=1, max_size=3).map(lambda o: {"anyOf": o}),
    )


schemas = st.recursive(SCALAR_SCHEMAS, _schema_combinators, max_leaves=10)
