"""`npllm quantize` and the generation flags of `npllm sample`: the int8 checkpoint, its
report (bytes, val loss), `--quantized`, `--greedy`, `--stream`, `--stop`, `--top-p`,
`--repetition-penalty`, and the warning for prompts longer than the context."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import cli
from npllm.checkpoint import load_checkpoint
from npllm.data import prepare
from tests.cli.conftest import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run on a small synthetic corpus."""
    root = tmp_path_factory.mktemp("qrun")
    words = "to be or not that is the question whether tis nobler".split()
    rng = np.random.default_rng(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) + "." for _ in range(300)))
    prepare(str(corpus), root / "data")
    assert (
        cli.main(
            [
                "train",
                "--data",
                str(root / "data"),
                "--out",
                str(root / "run"),
                *TINY,
                "--max-iters",
                "20",
                "--learning-rate",
                "1e-2",
            ]
        )
        == 0
    )
    return root / "run"


def sample(run, capsys, *flags):
    assert (
        cli.main(
            [
                "sample",
                "--run",
                str(run),
                "--prompt",
                "to be",
                "--max-new-tokens",
                "30",
                "--seed",
                "5",
                *flags,
            ]
        )
        == 0
    )
    return capsys.readouterr()


def test_quantize_writes_an_int8_checkpoint_and_reports_bytes_and_val_loss(run, capsys):
    assert cli.main(["quantize", str(run), "--eval-iters", "3"]) == 0
    out = capsys.readouterr().out
    assert "x smaller" in out and "val loss" in out and "int8" in out
    ck = load_checkpoint(run, "int8")
    assert ck.model_state["transformer.h.0.mlp.c_fc.weight"].dtype == np.int8
    assert ck.model_state["transformer.h.0.mlp.c_fc.weight_scale"].dtype == np.float32
    assert ck.info["quantization"]["embedding"] is True
    # the float checkpoints are untouched
    assert load_checkpoint(run, "best").model_state["transformer.wte.weight"].dtype == np.float32


def test_sample_quantized_greedy_stream_and_stop(run, capsys):
    assert cli.main(["quantize", str(run), "--eval-iters", "0"]) == 0
    capsys.readouterr()
    greedy = sample(run, capsys, "--greedy").out
    assert greedy.startswith("to be") and len(greedy) == len("to be") + 30 + 1
    assert sample(run, capsys, "--greedy", "--seed", "9").out == greedy  # seed is irrelevant
    q = sample(run, capsys, "--quantized", "--greedy").out
    assert q.startswith("to be") and len(q) == len(greedy)
    # streaming prints the same text as the one-shot path
    kw = ("--top-p", "0.9", "--repetition-penalty", "1.2", "--temperature", "1.3")
    assert sample(run, capsys, *kw, "--stream").out == sample(run, capsys, *kw).out
    # --stop ends right after the first occurrence of the text
    free = sample(run, capsys, "--temperature", "1.5").out[len("to be") : -1]
    stop = free[3:5]
    cut = sample(run, capsys, "--temperature", "1.5", "--stop", stop).out[len("to be") : -1]
    assert cut == free[: free.index(stop) + len(stop)]
    # escapes are read as in Python; other characters (even non-ASCII) as given
    lines = sample(
        run,
        capsys,
        "--temperature",
        "1.5",
        "--max-new-tokens",
        "60",
        "--stop",
        "\\n",
        "--stop",
        "é",
    ).out[len("to be") : -1]
    free = sample(run, capsys, "--temperature", "1.5", "--max-new-tokens", "60").out
    free = free[len("to be") : -1]
    assert "\n" in free and lines == free[: free.index("\n") + 1]


def test_sample_crops_long_prompts_with_a_one_line_warning(run, capsys):
    prompt = "to be or not " * 5  # 65 characters, block_size is 16
    assert (
        cli.main(
            ["sample", "--run", str(run), "--prompt", prompt, "--max-new-tokens", "5", "--greedy"]
        )
        == 0
    )
    res = capsys.readouterr()
    assert res.out.startswith(prompt)
    warning = res.err.strip().splitlines()
    assert len(warning) == 1 and "warning" in warning[0] and "16" in warning[0]


def test_quantize_and_sample_errors(run, tmp_path, capsys):
    assert cli.main(["sample", "--run", str(tmp_path), "--quantized"]) == 2
    assert "npllm quantize" in capsys.readouterr().err
    assert cli.main(["sample", "--run", str(run), "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert cli.main(["quantize", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
