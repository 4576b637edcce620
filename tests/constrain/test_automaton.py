"""The byte automata agree with independent judges before any model is involved: a regex
DFA accepts exactly the strings `re.fullmatch` accepts, UTF-8 byte ranges encode exactly
their code points, and the token masks agree with running each token's bytes."""

from __future__ import annotations

import itertools
import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npllm.constrain import regex_grammar, schema_grammar
from npllm.constrain.automaton import regex_dfa
from npllm.constrain.regex import parse_regex, utf8_sequences
from tests.constrain.strategies import regexes

ALPHABET = ["a", "b", "x", " ", "0", ".", '"', "é", "\n", "{", "-", "_"]
STRINGS = ["".join(t) for n in range(4) for t in itertools.product(ALPHABET, repeat=n)]


@settings(max_examples=60, deadline=None)
@given(pattern=regexes)
def test_dfa_accepts_what_re_fullmatch_accepts(pattern):
    """Every string of up to 3 characters from a small alphabet: same verdict."""
    dfa = regex_dfa(parse_regex(pattern))
    judge = re.compile(pattern, re.ASCII)
    for s in STRINGS:
        ours = dfa.n_states > 0 and dfa.matches(s.encode("utf-8"))
        assert ours == bool(judge.fullmatch(s)), (pattern, s)


@settings(max_examples=200, deadline=None)
@given(
    lo=st.integers(0, 0x10FFFF),
    width=st.integers(0, 0x10FFFF),
    probe=st.lists(st.integers(0, 0x10FFFF), min_size=50, max_size=50),
)
def test_utf8_sequences_cover_exactly_the_range(lo, width, probe):
    hi = min(lo + width, 0x10FFFF)
    seqs = utf8_sequences(lo, hi)
    for cp in [lo, hi, lo - 1, hi + 1, *probe]:
        if not 0 <= cp <= 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
            continue
        b = chr(cp).encode("utf-8")
        hit = any(
            len(seq) == len(b) and all(a <= x <= z for x, (a, z) in zip(b, seq)) for seq in seqs
        )
        assert hit == (lo <= cp <= hi), (hex(cp), hex(lo), hex(hi))


def test_masks_agree_with_running_token_bytes(bpe):
    """Every (state, token): allowed exactly when its bytes lead to a state that can
    still finish, and `next_state` is where they lead."""
    g = schema_grammar(
        {"type": "object", "properties": {"n": {"type": "number"}, "s": {"type": "string"}}}, bpe
    )
    dfa = g.dfa
    for state in range(0, g.n_states, max(1, g.n_states // 25)):
        for tok, data in enumerate(bpe.vocab):
            end = dfa.run(data, state)
            ok = end >= 0 and g.dist[end] >= 0
            assert g.masks[state, tok] == ok
            assert g.next_state(state, tok) == (end if ok else -1)


def test_dead_states_are_pruned():
    """`a(b|c[^\\s\\S])`: the branch through c can never finish, so it is not a state."""
    dfa = regex_dfa(parse_regex(r"a(b|c[^\s\S])"))
    assert dfa.n_states == 3  # start, after a, after ab
    assert dfa.run(b"ac") == -1 and dfa.matches(b"ab")


def test_budget_never_lets_a_row_get_stuck(chars):
    """With exactly the minimum number of tokens, every step has an allowed token and the
    output matches: the mask plans the shortest completion."""
    g = regex_grammar(r"(abc|d)+x[0-9]{3}", chars)
    n = g.min_tokens
    assert n == 5  # "d" "x" and 3 digits
    guide = g.guide(1, n)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        allowed = np.nonzero(guide.mask()[0])[0]
        assert allowed.size > 0
        tok = int(rng.choice(allowed))
        out.append(tok)
        guide.advance(np.array([tok]))
    assert guide.finished[0]
    assert re.fullmatch(r"(abc|d)+x[0-9]{3}", chars.decode(out))


def test_masks_are_cheap_per_step(bpe):
    """A step's mask is one row of a precomputed table: no vocabulary walk."""
    g = regex_grammar(r"[a-z ]+\.", bpe)
    guide = g.guide(1, 100)
    assert guide.mask().shape == (1, bpe.vocab_size)
    assert g.masks.shape == (g.n_states, bpe.vocab_size)
