"""Shared fixtures: a byte-level BPE and a char tokenizer trained on text made here (no
downloads), and randomly initialised tiny models over their vocabularies."""

from __future__ import annotations

import json
import random

import pytest

from npllm.decoder import Decoder
from npllm.gpt import GPT, GPTConfig
from npllm.tokenizers import BPETokenizer, CharTokenizer

WORDS = (
    "the king and queen of a far land spoke to me , then thou art here ; why not ? "
    "name age value list true false null 0 1 2 3 42 -7 3.14 1e5 x y z hello world"
).split()


def corpus(seed: int = 0, n: int = 400) -> str:
    """English-ish words and JSON documents, so that merges span words, numbers and
    JSON punctuation (`{"`, `":`, `",`) as a real tokenizer's would."""
    rng = random.Random(seed)
    parts = []
    for _ in range(n):
        parts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))))
        doc = {rng.choice(WORDS): rng.choice([rng.randint(-99, 999), rng.choice(WORDS), None])}
        parts.append(json.dumps(doc) + json.dumps([rng.random() < 0.5, rng.randint(0, 9)]))
    return "\n".join(parts)


@pytest.fixture(scope="session")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(corpus(), 512)


@pytest.fixture(scope="session")
def chars() -> CharTokenizer:
    return CharTokenizer([chr(i) for i in range(32, 127)] + ["\n", "é", "ü", "ï"])


def tiny_decoder(vocab_size: int, seed: int = 0) -> Decoder:
    """A randomly initialised 1-layer model: its logits are close to uniform, the
    hardest case for a mask (any allowed token is as likely as any other)."""
    config = GPTConfig(vocab_size=vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=32)
    return Decoder.from_model(GPT(config, seed=seed))


@pytest.fixture(scope="session")
def bpe_model(bpe) -> Decoder:
    return tiny_decoder(bpe.vocab_size)


@pytest.fixture(scope="session")
def char_model(chars) -> Decoder:
    return tiny_decoder(chars.vocab_size, seed=1)
