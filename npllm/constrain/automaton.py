"""Byte automata: a Thompson NFA built back to front, and the DFA made from it.

`NFA.build(node, out)` compiles a syntax tree of `npllm.constrain.regex` and returns the
state that starts it; matching it leads on to the state `out`. Building back to front,
from the continuation, is what lets the JSON Schema compiler share one sub-automaton
between many paths (every optional property of an object leads to the same "rest of the
object"), so that the automaton stays linear in the schema's size.

`determinize` runs the subset construction over byte classes (bytes that no range of the
NFA tells apart share a column), then keeps only the *live* states, those from which an
accepting state can still be reached: a DFA without dead states can always finish.

A `DFA` is a table `trans` (S, 256) int32, -1 where a byte leads nowhere, a boolean
`accept` (S,) and the start state 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npllm.constrain.regex import Alt, Chars, Node, Repeat, Seq, utf8_sequences
from npllm.errors import GrammarError

MAX_DFA_STATES = 50_000


class NFA:
    """States are ints. `eps[s]`: the states reached from s without reading a byte;
    `edges[s]`: (lo, hi, target) for each byte range s can read. `final` accepts."""

    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int, int]]] = []
        self.final = self.state()

    def state(self) -> int:
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def fork(self, targets: list[int]) -> int:
        """A state that goes on to any of `targets` without reading a byte."""
        s = self.state()
        self.eps[s].extend(targets)
        return s

    def bytes_(self, seq: tuple[tuple[int, int], ...], out: int) -> int:
        """A path reading one byte from each range of `seq`, then on to `out`."""
        for lo, hi in reversed(seq):
            s = self.state()
            self.edges[s].append((lo, hi, out))
            out = s
        return out

    def build(self, node: Node, out: int) -> int:
        if isinstance(node, Chars):
            return self.fork(
                [self.bytes_(seq, out) for lo, hi in node.ranges for seq in utf8_sequences(lo, hi)]
            )
        if isinstance(node, Seq):
            for item in reversed(node.items):
                out = self.build(item, out)
            return out
        if isinstance(node, Alt):
            return self.fork([self.build(o, out) for o in node.options])
        if isinstance(node, Repeat):
            if node.max is None:  # a loop: read the item and come back, or leave
                loop = self.state()
                self.eps[loop] += [self.build(node.item, loop), out]
                rest = loop
            else:  # the optional copies nest, x(x(x)?)?, so that a match has one path
                rest = out
                for _ in range(node.max - node.min):
                    rest = self.fork([self.build(node.item, rest), out])
            for _ in range(node.min):
                rest = self.build(node.item, rest)
            return rest
        raise TypeError(f"not a regex node: {node!r}")


@dataclass
class DFA:
    """trans (S, 256) int32, -1 = no transition; accept (S,) bool; start state 0."""

    trans: np.ndarray
    accept: np.ndarray

    @property
    def n_states(self) -> int:
        return len(self.accept)

    def run(self, data: bytes, state: int = 0) -> int:
        """The state after reading `data` from `state`, -1 if it leaves the automaton."""
        for b in data:
            state = int(self.trans[state, b])
            if state < 0:
                break
        return state

    def matches(self, data: bytes) -> bool:
        s = self.run(data)
        return s >= 0 and bool(self.accept[s])


def _byte_classes(nfa: NFA) -> tuple[np.ndarray, list[int]]:
    """(class of each byte (256,), first byte of each class): bytes that every range of
    the NFA holds or excludes together fall in one class."""
    cuts = {0, 256}
    for edges in nfa.edges:
        for lo, hi, _ in edges:
            cuts.update((lo, hi + 1))
    starts = sorted(cuts)[:-1]
    of_byte = np.zeros(256, np.int32)
    for k, s in enumerate(starts):
        of_byte[s:] = k
    return of_byte, starts


def determinize(nfa: NFA, start: int, max_states: int = MAX_DFA_STATES) -> DFA:
    """Subset construction from `start`, then dead states pruned. Raises GrammarError if
    the DFA would pass `max_states`; an empty language gives a DFA of zero states."""
    of_byte, class_starts = _byte_classes(nfa)
    n_classes = len(class_starts)
    # each NFA state's byte edges as (first class, last class, target)
    class_edges = [
        [(int(of_byte[lo]), int(of_byte[hi]), t) for lo, hi, t in edges] for edges in nfa.edges
    ]

    def closure(states) -> frozenset[int]:
        seen, stack = set(states), list(states)
        while stack:
            for t in nfa.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        # only states that read bytes or accept matter; dropping the others merges sets
        return frozenset(s for s in seen if class_edges[s] or s == nfa.final)

    first = closure([start])
    ids = {first: 0}
    order = [first]
    rows: list[list[int]] = []
    for current in order:  # grows while we walk it
        moves: dict[int, set[int]] = {}
        for s in current:
            for c0, c1, t in class_edges[s]:
                for c in range(c0, c1 + 1):
                    moves.setdefault(c, set()).add(t)
        row = [-1] * n_classes
        for c, targets in moves.items():
            key = closure(targets)
            j = ids.get(key)
            if j is None:
                if len(order) >= max_states:
                    raise GrammarError(
                        f"the automaton passes {max_states} states; simplify the regex or "
                        "schema (bounded repeats of alternatives multiply states)"
                    )
                j = ids[key] = len(order)
                order.append(key)
            row[c] = j
        rows.append(row)
    by_class = np.array(rows, np.int32).reshape(len(order), n_classes)
    accept = np.array([nfa.final in s for s in order], bool)
    return prune(DFA(by_class[:, of_byte], accept))


def distances_to_accept(src: np.ndarray, dst: np.ndarray, accept: np.ndarray) -> np.ndarray:
    """(S,) int64: the fewest edges src -> dst from each state to an accepting one
    (breadth-first, backwards from the accepting states); -1 where none leads there."""
    n = len(accept)
    pairs = np.unique(src.astype(np.int64) * n + dst)  # parallel edges count once
    order = np.argsort(pairs % n, kind="stable")
    into = (pairs // n)[order]  # sources, grouped by destination
    bounds = np.searchsorted((pairs % n)[order], np.arange(n + 1))
    dist = np.where(accept, 0, -1)
    frontier = list(np.nonzero(accept)[0])
    d = 0
    while frontier:
        d += 1
        nxt = []
        for t in frontier:
            for s in into[bounds[t] : bounds[t + 1]]:
                if dist[s] < 0:
                    dist[s] = d
                    nxt.append(s)
        frontier = nxt
    return dist


def live_states(trans: np.ndarray, accept: np.ndarray) -> np.ndarray:
    """(S,) bool: states from which an accepting state can be reached."""
    src, byte = np.nonzero(trans >= 0)
    return distances_to_accept(src, trans[src, byte], accept) >= 0


def prune(dfa: DFA) -> DFA:
    """Drop the states that cannot reach acceptance; number the rest from 0 in order
    (the start state, 0, stays first when it is live). Empty language: zero states."""
    live = live_states(dfa.trans, dfa.accept)
    if not live[0]:
        return DFA(np.zeros((0, 256), np.int32), np.zeros(0, bool))
    new_id = np.full(dfa.n_states + 1, -1, np.int32)  # index -1 (no transition) stays -1
    new_id[:-1][live] = np.arange(int(live.sum()), dtype=np.int32)
    return DFA(new_id[dfa.trans[live]], dfa.accept[live])


def regex_dfa(node: Node) -> DFA:
    """The DFA of a regex syntax tree."""
    nfa = NFA()
    return determinize(nfa, nfa.build(node, nfa.final))
