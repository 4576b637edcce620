"""Fixtures of the CLI tests: a small synthetic corpus, its prepared data folder, the
flags of a tiny model, and a slice of tinyshakespeare from the shared data (skipped when
absent: CI has it at <clone>/../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from npllm.data import prepare

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

# A model small enough that a training step takes milliseconds.
TINY = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--eval-iters",
    "2",
    "--eval-interval",
    "10",
    "--log-interval",
    "5",
    "--warmup-iters",
    "2",
    "--quiet",
]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    words = "to be or not that is the question whether tis nobler in mind suffer".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=8)) + "." for _ in range(400)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def data_dir(corpus_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare(str(corpus_file), out)
    return out


@pytest.fixture(scope="session")
def shakespeare_slice(tmp_path_factory) -> Path:
    src = SHARED_DATA / "tinyshakespeare.txt"
    if not src.is_file():
        pytest.skip(f"{src} is absent (the shared data folder beside the repo)")
    path = tmp_path_factory.mktemp("tiny") / "tiny.txt"
    path.write_text(src.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    return path
