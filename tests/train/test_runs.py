"""`npllm.runs.load_run`: the one way to get a trained model out of a run folder."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import cli
from npllm.errors import CheckpointError
from npllm.gpt import GPT
from npllm.runs import load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    words = "to be or not that is the question whether tis nobler in the mind".split()
    lines = [" ".join(np.random.default_rng(i).choice(words, 8)) + "." for i in range(300)]
    (out / "corpus.txt").write_text("\n".join(lines) + "\n")
    args = ["train", "--corpus", str(out / "corpus.txt"), "--out", str(out / "r")]
    args += ["--max-iters", "4", "--quiet"]
    args += ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16"]
    args += ["--eval-interval", "4", "--eval-iters", "1", "--batch-size", "2"]
    assert cli.main(args) == 0
    return out / "r"


def test_load_run_gives_the_checkpointed_model(run):
    loaded = load_run(run, "last")
    assert isinstance(loaded.model, GPT) and not loaded.model.training
    assert loaded.config.n_embd == 16 and loaded.info["iter"] == 4 and loaded.name == "last"
    ids = loaded.tokenizer.encode("to be")
    assert loaded.tokenizer.decode(ids) == "to be"
    fresh = GPT(loaded.config, seed=123)  # different weights until loaded
    before = fresh(np.array([ids]))[0].data
    fresh.load_state_dict(loaded.model.state_dict())
    fresh.eval()
    after = fresh(np.array([ids]))[0].data
    assert not np.allclose(before, after)
    np.testing.assert_array_equal(after, loaded.model(np.array([ids]))[0].data)


def test_load_run_errors_name_the_fix(run, tmp_path):
    with pytest.raises(CheckpointError, match="npllm quantize"):
        load_run(run, quantized=True)
    with pytest.raises(CheckpointError, match="npllm train --out"):
        load_run(tmp_path)


def test_load_run_quantized_after_quantize(run):
    assert cli.main(["quantize", str(run), "--checkpoint", "last", "--eval-iters", "0"]) == 0
    loaded = load_run(run, quantized=True)
    assert loaded.name == "int8" and loaded.config.n_layer == 1
    ids = np.array([loaded.tokenizer.encode("to be")])
    ref = load_run(run, "last").model(ids)[0].data
    np.testing.assert_allclose(loaded.model.forward(ids), ref, atol=0.05)
