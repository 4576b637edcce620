"""`npllm prepare`, `train`, `sample` and `plot` end to end on a small slice with a tiny
model, bit-for-bit resume (also after a run killed while checkpointing), and the
one-line errors of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import npllm.checkpoint as ckpt
from npllm import cli
from npllm.checkpoint import load_checkpoint

from .conftest import TINY


def records(run, key):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["iter"], r[key]) for r in map(json.loads, lines) if key in r]


def test_prepare_train_resume_sample_end_to_end(shakespeare_slice, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert cli.main(["prepare", "--corpus", str(shakespeare_slice), "--out", str(data)]) == 0
    assert "train and" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                *TINY,
                "--max-iters",
                "30",
                "--learning-rate",
                "1e-2",
            ]
        )
        == 0
    )
    assert cli.main(["train", "--out", str(run), "--resume", "--max-iters", "50", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained 50 iterations" in out
    evals = records(run, "val_loss")
    assert [i for i, _ in evals] == [0, 10, 20, 30, 40, 50]
    assert evals[-1][1] < evals[0][1] - 0.3  # it learned something
    assert [i for i, _ in records(run, "loss")] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert load_checkpoint(run, "last").info["iter"] == 50
    sample = ["sample", "--run", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "40"]
    assert cli.main([*sample, "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40 + 1
    assert cli.main([*sample, "--seed", "3"]) == 0
    assert capsys.readouterr().out == text  # seeded sampling repeats


def test_train_from_a_corpus_in_one_command_with_bpe_and_overwrite(corpus_file, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "--corpus",
        str(corpus_file),
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "300",
        "--out",
        str(run),
        *TINY,
        "--max-iters",
        "10",
    ]
    assert cli.main(argv) == 0
    meta = json.loads((run / "data" / "meta.json").read_text())
    assert meta["tokenizer"] == "bpe" and 256 < meta["vocab_size"] <= 300
    first = load_checkpoint(run, "last")
    assert first.info["model_config"]["vocab_size"] == 300  # the flag pads the embedding
    assert cli.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == 0
    again = load_checkpoint(run, "last")
    for k, v in first.model_state.items():
        np.testing.assert_array_equal(v, again.model_state[k])  # same seed, same run


def assert_same_run(a, b):
    ca, cb = load_checkpoint(a, "last"), load_checkpoint(b, "last")
    assert ca.info["iter"] == cb.info["iter"]
    assert ca.model_state.keys() == cb.model_state.keys()
    for k in ca.model_state:
        assert ca.model_state[k].tobytes() == cb.model_state[k].tobytes(), k
    sa, sb = ca.optimizer_state["state"], cb.optimizer_state["state"]
    for i in sa:
        for name in ("exp_avg", "exp_avg_sq"):
            assert sa[i][name].tobytes() == sb[i][name].tobytes()
    assert ca.info["rng"] == cb.info["rng"]
    assert records(a, "loss") == records(b, "loss")
    assert records(a, "val_loss") == records(b, "val_loss")


# dropout and gradient accumulation on, so every random stream and the step logic count
RESUMABLE = [
    *TINY,
    "--dropout",
    "0.2",
    "--gradient-accumulation-steps",
    "2",
    "--lr-decay-iters",
    "20",
]


def test_resume_continues_bit_for_bit(data_dir, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    base = ["train", "--data", str(data_dir), *RESUMABLE]
    assert cli.main([*base, "--out", str(straight), "--max-iters", "20"]) == 0
    assert cli.main([*base, "--out", str(split), "--max-iters", "10"]) == 0
    at10 = load_checkpoint(split, "last").model_state
    assert cli.main(["train", "--out", str(split), "--resume", "--max-iters", "20", "--quiet"]) == 0
    assert_same_run(straight, split)
    at20 = load_checkpoint(split, "last").model_state
    assert any(not np.array_equal(at10[k], at20[k]) for k in at10)


def test_a_run_killed_while_checkpointing_resumes_from_the_previous_one(
    data_dir, tmp_path, monkeypatch, capsys
):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    base = ["train", "--data", str(data_dir), *RESUMABLE, "--max-iters", "20"]
    assert cli.main([*base, "--out", str(straight)]) == 0
    real = ckpt.write_json_atomic

    def write_json_atomic(path, obj):
        if path.name == "last.json" and obj["iter"] == 20:
            partial = path.with_name(".last.json.partial.tmp")
            partial.write_text(json.dumps(obj)[:50])  # the temp file a kill leaves behind
            raise KeyboardInterrupt  # killed before the rename
        real(path, obj)

    monkeypatch.setattr(ckpt, "write_json_atomic", write_json_atomic)
    assert cli.main([*base, "--out", str(killed)]) == 130
    monkeypatch.undo()
    assert load_checkpoint(killed, "last").info["iter"] == 10
    assert cli.main(["train", "--out", str(killed), "--resume", "--quiet"]) == 0
    assert_same_run(straight, killed)
    capsys.readouterr()


def fails_with(argv, capsys, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
        (b"\xff\xfe t\x00e\x00", "binary"),
        (b"caf\xe9 au lait", "not UTF-8"),
    ],
)
def test_prepare_and_train_refuse_unusable_corpus_files(tmp_path, capsys, content, message):
    corpus = tmp_path / "c.txt"
    if content is not None:
        corpus.write_bytes(content)
    fails_with(["prepare", "--corpus", str(corpus), "--out", str(tmp_path / "d")], capsys, message)
    fails_with(
        ["train", "--corpus", str(corpus), "--out", str(tmp_path / "r"), *TINY], capsys, message
    )


def test_train_refuses_bad_data_folders(tmp_path, data_dir, capsys):
    fails_with(
        ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
        capsys,
        "no prepared data",
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text((data_dir / "meta.json").read_text())
    (broken / "train.bin").write_bytes(b"")
    fails_with(
        ["train", "--data", str(broken), "--out", str(tmp_path / "r")], capsys, "empty or truncated"
    )
    short = tmp_path / "short.txt"
    short.write_text("a short text of a hundred characters or so, " * 2)
    fails_with(
        ["train", "--corpus", str(short), "--out", str(tmp_path / "r2"), *TINY],
        capsys,
        "fewer than block_size + 1",
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--preset", "gpt-5"], "unknown preset 'gpt-5'; choose one of cpu-small, guppy"),
        (["--n-head", "3"], "divisible by n_head"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--beta2", "1.5"], "--beta2 must lie in [0, 1)"),
        (["--activation", "swish"], "activation 'swish' is unknown"),
        (["--vocab-size", "3"], "smaller than the data's vocabulary"),
        (["--resume", "--overwrite"], "not both"),
    ],
)
def test_bad_config_values_are_one_line_errors(data_dir, tmp_path, capsys, flags, message):
    fails_with(
        ["train", "--data", str(data_dir), "--out", str(tmp_path / "r"), *TINY, *flags],
        capsys,
        message,
    )


def test_unparseable_flag_values_exit_2(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", str(data_dir), "--out", str(tmp_path), "--n-layer", "two"])
    assert e.value.code == 2 and "invalid int value: 'two'" in capsys.readouterr().err


def test_resume_refuses_missing_corrupt_or_mismatched_checkpoints(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    fails_with(["train", "--out", str(run), "--resume"], capsys, "no checkpoint 'last'")
    assert (
        cli.main(["train", "--data", str(data_dir), "--out", str(run), *TINY, "--max-iters", "10"])
        == 0
    )
    fails_with(
        ["train", "--out", str(run), "--resume", "--n-embd", "32"], capsys, "keeps its shape"
    )
    fails_with(["train", "--out", str(run), "--resume"], capsys, "already at iteration 10")
    record = json.loads((run / "last.json").read_text())
    record["model_config"]["n_embd"] = 32  # a record whose weights do not fit its config
    (run / "last.json").write_text(json.dumps(record))
    fails_with(
        ["train", "--out", str(run), "--resume", "--max-iters", "20"],
        capsys,
        "does not fit this model",
    )
    record["model_config"]["n_embd"] = 16
    (run / "last.json").write_text(json.dumps(record))
    weights = run / record["weights"]
    weights.write_bytes(weights.read_bytes()[:-100])
    fails_with(["train", "--out", str(run), "--resume", "--max-iters", "20"], capsys, "corrupt")
    (run / "last.json").write_text("{")
    fails_with(["train", "--out", str(run), "--resume", "--max-iters", "20"], capsys, "corrupt")


def test_sample_errors(data_dir, tmp_path, capsys):
    fails_with(["sample", "--run", str(tmp_path)], capsys, "no checkpoint 'best'")
    run = tmp_path / "run"
    assert (
        cli.main(["train", "--data", str(data_dir), "--out", str(run), *TINY, "--max-iters", "10"])
        == 0
    )
    fails_with(
        ["sample", "--run", str(run), "--prompt", "Zebra!"],
        capsys,
        "not in the tokenizer's alphabet",
    )
    fails_with(["sample", "--run", str(run), "--prompt", ""], capsys, "prompt is empty")
    fails_with(["sample", "--run", str(run), "--temperature", "-1"], capsys, "temperature")


def test_plot_writes_a_png(data_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    fails_with(["plot", str(run)], capsys, "no metrics.jsonl")
    assert (
        cli.main(["train", "--data", str(data_dir), "--out", str(run), *TINY, "--max-iters", "10"])
        == 0
    )
    assert cli.main(["plot", str(run)]) == 0
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
