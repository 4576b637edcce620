r"""Our allowed-token masks equal those of an outside implementation, outlines-core's
`Index`, for a set of regexes over a byte-level BPE vocabulary (trained in the test).

The two automata number their states differently, so the test walks both at once:
from the pair of start states, for every pair reached it compares the allowed sets and
follows every allowed token to the next pair. Equal sets at every reachable pair mean
equal masks for every possible generation.

One known difference: outlines-core 0.2.14 (the newest release) drops a token whose
bytes pass through an accepting state just before their last byte and end in a
non-accepting one: after "0" under `-?(0|[1-9][0-9]*)(\.[0-9]+)?` it forbids ".", so
"0.5" cannot be written. Its DFA library reports matches one byte late, and the index
read that flag as "the token ends in a match"; upstream fixed it after that release
(commit 2ba0b24, "fix: avoid generating incomplete automata"). The test accepts, per
state, either equal sets or exactly that difference, computed from our own DFA; the
regexes where it cannot arise must agree exactly."""

from __future__ import annotations

import outlines_core  # the test extra installs it
import pytest

from npllm.constrain import regex_grammar

EXACT = [  # no token passes through an accepting state into a non-accepting one
    r"[0-9]+",
    r"(true|false|null)",
    r"the (king|queen)[.!?]",
    r'\{"name": "[a-z ]{1,12}"\}',
    r"[A-Z][a-z]*, [a-z]+",
    r"[^\n]{0,6}\n",
    r"(x|yy|zzz){2}",
    r'"([^"\\]|\\["\\n])*"',
]
WITH_KNOWN_GAP = [
    r"-?(0|[1-9][0-9]*)(\.[0-9]+)?",
    r"[a-z]+( [a-z]+){0,3}",
    r"(ab|a)*b",
    r"é+|[0-9]{2,4}",
]


def known_gap(ours, state: int, allowed: set[int], vocab: list[bytes]) -> set[int]:
    """The tokens outlines-core 0.2.14 leaves out (module docstring): accepting just
    before the last byte, not accepting after it."""
    dfa = ours.dfa
    gap = set()
    for tok in allowed:
        if tok < len(vocab):
            before = dfa.run(vocab[tok][:-1], state)
            if dfa.accept[before] and not dfa.accept[dfa.run(vocab[tok], before)]:
                gap.add(tok)
    return gap


def walk_both(ours, theirs, eos: int, vocab: list[bytes], exact: bool) -> int:
    """Compare allowed sets over every reachable pair of states; return the pairs seen."""
    start = (0, theirs.get_initial_state())
    seen, todo = {start}, [start]
    while todo:
        s, t = todo.pop()
        mine = set(ours.allowed(s).tolist())
        other = set(theirs.get_allowed_tokens(t) or [])
        expected = [mine] if exact else [mine, mine - known_gap(ours, s, mine, vocab)]
        assert other in expected, (
            f"state pair {(s, t)}: only ours {sorted(mine - other)[:10]}, "
            f"only outlines-core {sorted(other - mine)[:10]}"
        )
        for tok in other - {eos}:
            pair = (ours.next_state(s, tok), theirs.get_next_state(t, tok))
            if pair not in seen:
                seen.add(pair)
                todo.append(pair)
    return len(seen)


@pytest.mark.parametrize("pattern", EXACT + WITH_KNOWN_GAP)
def test_masks_equal_outlines_core(pattern, bpe):
    V = bpe.vocab_size
    eos = V  # one id past the vocabulary ends the sequence, in both
    ours = regex_grammar(pattern, bpe, vocab_size=V + 1, eos_ids=[eos])
    vocabulary = outlines_core.Vocabulary(eos, {tok: [i] for i, tok in enumerate(bpe.vocab)})
    theirs = outlines_core.Index(pattern, vocabulary)
    pairs = walk_both(ours, theirs, eos, bpe.vocab, exact=pattern in EXACT)
    assert pairs >= 2
