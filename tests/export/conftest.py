"""Fixtures of the export tests: tiny GPT-2-family runs with random weights (every bias and
norm perturbed, so a misplaced tensor shows) and a byte-level BPE tokenizer trained on a
varied text, saved as run folders the way training saves them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from npllm.chat import CHAT_SPECIALS
from npllm.checkpoint import save_checkpoint
from npllm.gpt import GPT, GPTConfig
from npllm.tokenizers import BPETokenizer, CharTokenizer

# Unicode of several scripts, whitespace runs, digits, punctuation, and a special's text.
VARIED = (
    "Hello, world!  It's 2024; the café's crème brûlée costs 4.50 € — naïve?\n"
    "\tTabs\tand   spaces   \n\n\nnew lines. Ünïcödé: Ελληνικά, русский, 日本語のテキスト, "
    "한국어, עברית, emoji 🐟🐠🎉 and don't we'll they've I'm. snake_case x=1+2 "
)
EXAMPLE = VARIED + "<|im_start|>user\nhi<|im_end|>\n<|endoftext|> trailing   "
MESSAGES = [
    {"role": "system", "content": "You are a fish.  Answer briefly."},
    {"role": "user", "content": "Où est l'eau? 🐟"},
    {"role": "assistant", "content": "Here,\n  all around."},
    {"role": "user", "content": "thanks"},
]


def perturbed(config: GPTConfig, seed: int) -> GPT:
    """A GPT whose every parameter is random (biases and LayerNorms too)."""
    model = GPT(config, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        if p.ndim == 1:  # biases and norm weights
            p.data[...] += rng.normal(0, 0.1, p.shape).astype(np.float32)
    model.eval()
    return model


def save_run(run_dir: Path, model: GPT, tokenizer) -> Path:
    info = {
        "iter": 0,
        "model_config": dataclasses.asdict(model.config),
        "tokenizer": tokenizer.to_dict(),
    }
    save_checkpoint(run_dir, "best", model.state_dict(), {}, info)
    return run_dir


@pytest.fixture(scope="session")
def bpe() -> BPETokenizer:
    text = (VARIED * 3) + " ".join(f"word{i} thing{i % 7}" for i in range(200))
    return BPETokenizer.train(text, 380, specials=CHAT_SPECIALS)


@pytest.fixture(scope="session")
def char_tok() -> CharTokenizer:
    text = VARIED + EXAMPLE + "".join(m["role"] + m["content"] for m in MESSAGES) + "assistant"
    return CharTokenizer.from_text(text, specials=CHAT_SPECIALS)


def tiny_config(vocab_size: int, **kw) -> GPTConfig:
    base = dict(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def bpe_run(tmp_path_factory, bpe) -> Path:
    model = perturbed(tiny_config(bpe.vocab_size), seed=1)
    return save_run(tmp_path_factory.mktemp("bpe_run"), model, bpe)


def trained(config: GPTConfig, tokenizer, steps: int = 60, seed: int = 0) -> GPT:
    """A GPT fitted for a few seconds to EXAMPLE repeated, so that its greedy continuation
    is a varied text and not one token over and over (as a random model's is)."""
    model = perturbed(config, seed)
    model.train()
    data = np.array(tokenizer.encode(EXAMPLE * 4, allowed_special="all"))
    opt = model.configure_optimizers(0.0, 3e-3, (0.9, 0.99))
    rng = np.random.default_rng(seed)
    T = min(config.block_size, 64)
    for _ in range(steps):
        starts = rng.integers(0, len(data) - T - 1, 4)
        x = np.stack([data[s : s + T] for s in starts])
        y = np.stack([data[s + 1 : s + T + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model
