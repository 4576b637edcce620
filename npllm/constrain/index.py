"""From a byte DFA to token masks: `Grammar` (built once) and `Guide` (one generation).

A token is a byte string (a BPE token's bytes, a character's UTF-8), so reading token t
in DFA state s means running its bytes through the DFA. `Grammar` does that for every
state and every token at once, walking a trie of the vocabulary: each trie node carries
the array of start states still alive after its prefix, so a prefix shared by many tokens
is read once, and a state drops out at the first byte that kills it. The result is a
list of edges (state, token, next state), kept sorted by state (`edge_start` indexes it)
together with a dense (S, V) boolean `masks` table, so the mask of a step is one row.

Token-level pruning: a state may be alive for bytes yet unreachable in whole tokens (a
character tokenizer without `{` cannot start a JSON object). `dist[s]` is the fewest
tokens that take s to an accepting state; edges into states with no such path are
dropped, so every allowed token leaves the generation able to finish. A grammar whose
start state cannot finish is refused when built.

End of sequence: the ids in `eos_ids` (`<|endoftext|>`, `<|im_end|>`) are allowed
exactly in accepting states, and never in the others.

A `Guide` follows B rows through one generation. Its mask also respects the budget: with
r tokens left, a token is allowed only if its next state can finish in r - 1 tokens
(its end-of-sequence token included), so `max_new_tokens` never cuts an output short.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from npllm.constrain.automaton import DFA, distances_to_accept
from npllm.errors import GrammarError


def vocabulary_bytes(tokenizer, vocab_size: int | None = None) -> list[bytes | None]:
    """Each token id's bytes: a BPE token's byte string, a character's UTF-8; None for
    ids that spell no text (special tokens, ids past the tokenizer's vocabulary)."""
    if hasattr(tokenizer, "vocab"):  # byte-level BPE
        toks: list[bytes | None] = list(tokenizer.vocab)
    elif hasattr(tokenizer, "chars"):
        toks = [c.encode("utf-8") for c in tokenizer.chars]
    else:
        raise GrammarError(
            f"cannot read the vocabulary of a {type(tokenizer).__name__}; use a "
            "CharTokenizer or BPETokenizer"
        )
    for i in special_ids(tokenizer):
        if i < len(toks):
            toks[i] = None
    n = len(toks) if vocab_size is None else vocab_size
    return (toks + [None] * n)[:n]


END_OF_OUTPUT = ("<|im_end|>", "<|endoftext|>")


def special_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's special tokens (`tokenizer.specials`: text -> id)."""
    return sorted(getattr(tokenizer, "specials", {}).values())


def end_ids(tokenizer) -> list[int]:
    """The special tokens that end an output: `<|im_end|>` (a chat turn) and
    `<|endoftext|>`, those of them the tokenizer has."""
    specials = getattr(tokenizer, "specials", {})
    return sorted(specials[t] for t in END_OF_OUTPUT if t in specials)


class Grammar:
    """A DFA walked over a vocabulary. `tokens[i]` is token i's bytes (None: never
    allowed by the automaton); `eos_ids` end the output and are allowed in accepting
    states only. `description` names the grammar in error messages."""

    def __init__(
        self,
        dfa: DFA,
        tokens: Sequence[bytes | None],
        eos_ids: Sequence[int] = (),
        description: str = "the grammar",
    ) -> None:
        self.description = description
        if dfa.n_states == 0:
            raise GrammarError(f"{description} matches no text at all, so nothing can satisfy it")
        self.dfa = dfa
        V = self.vocab_size = len(tokens)
        self.eos_ids = np.array(sorted(set(eos_ids)), np.int64)
        if self.eos_ids.size and (self.eos_ids.min() < 0 or self.eos_ids.max() >= V):
            raise GrammarError(f"end-of-sequence ids {list(eos_ids)} lie outside [0, {V})")
        src, tok, dst = _walk_vocabulary(dfa.trans, tokens)
        dist = distances_to_accept(src, dst, dfa.accept)
        if dist[0] < 0:
            raise GrammarError(
                f"{description} has matching text, but this tokenizer's vocabulary cannot "
                "spell any of it; use a tokenizer whose tokens cover the needed characters"
            )
        keep = dist[dst] >= 0  # tokens into states that can never finish are dropped
        src, tok, dst = src[keep], tok[keep], dst[keep]
        order = np.lexsort((tok, src))
        self.edge_tok, self.edge_dst = tok[order], dst[order]  # (E,), sorted by (state, token)
        S = dfa.n_states
        # the edges of state s are [edge_start[s], edge_start[s + 1])
        self.edge_start = np.searchsorted(src[order], np.arange(S + 1))
        self.dist = dist  # (S,) tokens to acceptance; -1 for states no token path finishes
        self.masks = np.zeros((S, V), bool)
        self.masks[src, tok] = True
        if self.eos_ids.size:
            self.masks[np.ix_(dfa.accept, self.eos_ids)] = True
        self.accept = dfa.accept
        # the farthest and the nearest next state of each state, in tokens to acceptance:
        # a budget of `far` tokens after this one changes nothing; under `near`, no token
        # can be added and an accepting state must end there
        far, near = np.zeros(S, np.int64), np.full(S, np.iinfo(np.int64).max)
        np.maximum.at(far, src, dist[dst])
        np.minimum.at(near, src, dist[dst])
        self.far, self.near = far, near
        # with an end-of-sequence token, a complete output also needs the token to end it
        self.tail = int(self.eos_ids.size > 0)

    @property
    def n_states(self) -> int:
        return self.dfa.n_states

    @property
    def min_tokens(self) -> int:
        """The fewest tokens of any complete output (its end-of-sequence included)."""
        return int(self.dist[0]) + self.tail

    def allowed(self, state: int) -> np.ndarray:
        """Sorted token ids allowed in `state` (end-of-sequence ids included)."""
        return np.nonzero(self.masks[state])[0]

    def next_state(self, state: int, token: int) -> int:
        """The state after `token`, -1 if the token is not allowed there."""
        a, b = self.edge_start[state], self.edge_start[state + 1]
        k = a + int(np.searchsorted(self.edge_tok[a:b], token))
        return int(self.edge_dst[k]) if k < b and self.edge_tok[k] == token else -1

    def guide(self, batch: int, max_new_tokens: int) -> Guide:
        """A `Guide` for `batch` rows; refuses a budget too short for any output."""
        if self.min_tokens > max_new_tokens:
            raise GrammarError(
                f"{self.description} needs at least {self.min_tokens} tokens; "
                f"max_new_tokens is {max_new_tokens}: raise it"
            )
        return Guide(self, batch, max_new_tokens)


class Guide:
    """The DFA state of each of B rows during one generation. `mask()` -> (B, V) bool
    for the next token; `advance(ids, active)` moves the rows that emitted `ids` (all, or
    those where `active`) and returns which rows are finished: end-of-sequence emitted,
    or, for a vocabulary without one, an accepting state where no token may follow."""

    def __init__(self, grammar: Grammar, batch: int, max_new_tokens: int) -> None:
        self.g = grammar
        self.state = np.zeros(batch, np.int64)
        self.max_new_tokens = max_new_tokens
        self.step = 0  # tokens emitted so far
        # finished before the first token: only the empty output fits (or the budget)
        self.finished = np.full(batch, self._must_end(0))

    def mask(self) -> np.ndarray:
        g = self.g
        left = self.max_new_tokens - self.step - 1  # tokens after this one
        out = g.masks[self.state]  # (B, V), a copy (fancy indexing)
        for b, s in enumerate(self.state):
            if self.finished[b]:
                out[b] = True  # ignored by the caller; keeps its softmax finite
            elif g.far[s] + g.tail > left:  # near the budget: tokens that can still finish
                a, e = g.edge_start[s], g.edge_start[s + 1]
                late = g.dist[g.edge_dst[a:e]] + g.tail > left
                out[b, g.edge_tok[a:e][late]] = False
        return out

    def advance(self, ids: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        g = self.g
        for b, t in enumerate(ids):
            if self.finished[b] or (active is not None and not active[b]):
                continue
            if t in g.eos_ids and g.accept[self.state[b]]:
                self.finished[b] = True
                continue
            s = g.next_state(int(self.state[b]), int(t))
            if s < 0:
                raise GrammarError(f"token {t} is not allowed in state {self.state[b]}")
            self.state[b] = s
        self.step += 1
        for b, s in enumerate(self.state):
            if not self.finished[b] and self._must_end(s):
                self.finished[b] = True
        return self.finished.copy()

    def _must_end(self, s: int) -> bool:
        """An accepting state where no token can follow within the budget, and no
        end-of-sequence token to emit: the output is complete as it is."""
        g = self.g
        left = self.max_new_tokens - self.step  # tokens still to come
        return bool(g.accept[s]) and g.eos_ids.size == 0 and g.near[s] > left - 1


def _walk_vocabulary(
    trans: np.ndarray, tokens: Sequence[bytes | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (state, token, next state) with the token's bytes leading from the state to
    the next one: a depth-first walk of the vocabulary's trie, carrying the start states
    still alive and where each now stands."""
    trie: dict = {}
    for t, data in enumerate(tokens):
        if not data:
            continue
        node = trie
        for byte in data:
            node = node.setdefault(byte, {})
        node.setdefault(None, []).append(t)  # key None: the tokens that end here
    S = trans.shape[0]
    found_src, found_tok, found_dst = [], [], []
    stack = [(trie, np.arange(S, dtype=np.int32), np.arange(S, dtype=np.int32))]
    while stack:
        node, start, now = stack.pop()
        for byte, child in node.items():
            if byte is None:
                for t in child:
                    found_src.append(start)
                    found_tok.append(np.full(len(start), t, np.int64))
                    found_dst.append(now)
                continue
            nxt = trans[now, byte]
            alive = nxt >= 0
            if alive.any():
                stack.append((child, start[alive], nxt[alive]))
    if not found_src:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return (
        np.concatenate(found_src).astype(np.int64),
        np.concatenate(found_tok),
        np.concatenate(found_dst).astype(np.int64),
    )
