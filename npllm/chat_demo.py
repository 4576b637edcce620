"""`chat-demo`: a seeded synthetic conversation set, so the chat flow runs with no download.

The assistant is one persona throughout: Pip, a small robot who keeps the lighthouse on
Gull Island with Mara, the keeper, and Biscuit, her cat. It answers about forty topics
(its lamp, the sea, weather, birds, food, small sums, ...), each asked in many wordings:
a greeting, a phrasing of the question and a closing are drawn independently, so a large
share of the questions in a validation split never occur in training. A quarter of the
conversations open with a system message, a third run to two to four exchanges, where
"tell me more" and "why?" get an answer about the topic just discussed. All text is ours.

`conversations(n, seed)` is deterministic: the same `n` and `seed` give the same list.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# The words of the set (topics with their questions, answers and follow-up answer; the
# greetings, closings and system messages; paraphrases of answers) live in
# corpora/chat_demo.json beside this package's code.
_WORDS = json.loads(
    (Path(__file__).parent / "corpora" / "chat_demo.json").read_text(encoding="utf-8")
)
# (topic, questions, answers, a follow-up answer for "tell me more" / "why?")
TOPICS: list[tuple[str, list[str], list[str], str]] = [tuple(t) for t in _WORDS["topics"]]
# (what the user says, what Pip answers)
GREETINGS: list[tuple[str, str]] = [tuple(p) for p in _WORDS["greetings"]]
THANKS: list[tuple[str, str]] = [tuple(p) for p in _WORDS["thanks"]]
GOODBYES: list[tuple[str, str]] = [tuple(p) for p in _WORDS["goodbyes"]]
MORE: list[str] = _WORDS["more"]
PREFIXES: list[str] = _WORDS["prefixes"]
SUFFIXES: list[str] = _WORDS["suffixes"]
SYSTEMS: list[str] = _WORDS["systems"]


def ask(question: str, rng: np.random.Generator) -> str:
    """A user's wording of `question`: a greeting, the question, a closing, a case."""
    text = PREFIXES[rng.integers(len(PREFIXES))] + question + SUFFIXES[rng.integers(len(SUFFIXES))]
    return text[:1].upper() + text[1:] if rng.random() < 0.5 else text


def _pick(items: list, rng: np.random.Generator):
    return items[rng.integers(len(items))]


def conversation(rng: np.random.Generator) -> list[dict[str, str]]:
    """One conversation: an optional system message, then one to three exchanges."""
    msgs: list[dict[str, str]] = []
    if rng.random() < 0.25:
        msgs.append({"role": "system", "content": _pick(SYSTEMS, rng)})

    def turn(user: str, assistant: str) -> None:
        msgs.append({"role": "user", "content": user})
        msgs.append({"role": "assistant", "content": assistant})

    multi = rng.random() < 0.35
    if multi and rng.random() < 0.4:
        greet, reply = _pick(GREETINGS, rng)
        turn(greet + _pick(["", "!", "."], rng), reply)
    _, questions, answers, more = _pick(TOPICS, rng)
    turn(ask(_pick(questions, rng), rng), _pick(answers, rng))
    if multi:
        r = rng.random()
        if r < 0.4:
            turn(_pick(MORE, rng) + _pick(["?", "", "!"], rng), more)
        elif r < 0.7:
            _, questions, answers, _ = _pick(TOPICS, rng)
            turn(ask(_pick(questions, rng), rng), _pick(answers, rng))
        else:
            turn(*_pick(THANKS, rng))
        if rng.random() < 0.3:
            turn(*_pick(GOODBYES, rng))
    return msgs


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """`n` conversations, the same ones for the same seed."""
    rng = np.random.default_rng([3, seed])
    return [conversation(rng) for _ in range(n)]


def _answer_topics() -> dict[str, str]:
    out = {}
    for name, _, answers, more in TOPICS:
        for a in [*answers, more]:
            out[a] = name
    return out


def same_topic(reply: str, reference: str) -> bool | None:
    """Whether `reply` is one of chat-demo's answers on the topic `reference` answers;
    None when `reference` is not a chat-demo topic answer."""
    topics = _answer_topics()
    want = topics.get(reference)
    return None if want is None else topics.get(reply) == want


# One question per topic in a wording chat-demo never generates (checked by a test):
# `npllm chat --eval` asks them too, to show how far past its templates a model goes.
PARAPHRASES: list[tuple[str, str]] = [tuple(p) for p in _WORDS["paraphrases"]]


def topic_answers(topic: str) -> set[str]:
    """Every reply chat-demo gives on `topic` (its answers and its follow-up)."""
    for name, _, answers, more in TOPICS:
        if name == topic:
            return {*answers, more}
    raise KeyError(topic)
