"""`npllm train` when things go wrong: a diverging loss stops the run and keeps the last
good checkpoint, a short run scales the default warmup, Ctrl-C writes a checkpoint that
--resume continues bit for bit, an unwritable --out is one line; and `--init-from`."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

import npllm.data
from npllm import cli
from npllm.checkpoint import load_checkpoint
from npllm.errors import DataError
from npllm.gpt import GPT, GPTConfig
from npllm.runs import init_weights
from npllm.tokenizers import load_tokenizer

from .conftest import TINY


def train(data_dir, run, *extra):
    return cli.main(["train", "--data", str(data_dir), "--out", str(run), *TINY, *extra])


def one_line_error(capsys, code, rc):
    err = capsys.readouterr().err
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_diverging_loss_stops_at_once_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    assert train(data_dir, run, "--max-iters", "20") == 0
    good = load_checkpoint(run, "last")
    capsys.readouterr()
    resume = ["train", "--out", str(run), "--resume", "--max-iters", "40", "--quiet"]
    rc = cli.main([*resume, "--learning-rate", "1e6"])
    line = one_line_error(capsys, 2, rc)
    assert "became non-finite at iteration" in line and "--learning-rate" in line
    assert "last good checkpoint (iteration 20) is kept" in line
    kept = load_checkpoint(run, "last")  # still loadable, still the good one
    assert kept.info["iter"] == 20
    for k, v in kept.model_state.items():
        assert np.isfinite(v).all() and np.array_equal(v, good.model_state[k])
    # from scratch: stops within a few steps, says no checkpoint was written
    rc = train(data_dir, tmp_path / "fresh", "--max-iters", "50", "--learning-rate", "1e6")
    line = one_line_error(capsys, 2, rc)
    assert "no checkpoint had been written yet" in line
    assert not (tmp_path / "fresh" / "last.json").exists()


def test_short_runs_scale_the_preset_warmup_and_say_so(data_dir, tmp_path, capsys):
    i = TINY.index("--warmup-iters")
    tiny = TINY[:i] + TINY[i + 2 :]
    run = tmp_path / "run"
    rc = cli.main(["train", "--data", str(data_dir), "--out", str(run), *tiny, "--max-iters", "20"])
    err = capsys.readouterr().err
    assert rc == 0 and "warmup shortened from 100 to 2 steps" in err
    assert load_checkpoint(run, "last").info["train_config"]["warmup_iters"] == 2
    # an explicit warmup is the user's: still refused when it cannot fit
    rc = cli.main(
        ["train", "--data", str(data_dir), "--out", str(tmp_path / "b"), *tiny]
        + ["--max-iters", "20", "--warmup-iters", "100"]
    )
    assert "before its warmup ends" in one_line_error(capsys, 2, rc)


def test_ctrl_c_writes_a_checkpoint_that_resume_continues_bit_for_bit(
    data_dir, tmp_path, capsys, monkeypatch
):
    straight = tmp_path / "straight"
    assert train(data_dir, straight, "--max-iters", "30") == 0
    calls = {"n": 0}
    real = npllm.data.get_batch

    def get_batch(*args):
        calls["n"] += 1
        # calls: 4 at the first evaluation, steps 1-10, 4 more, then step 13's batch
        if calls["n"] == 21:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, mid-step
        return real(*args)

    monkeypatch.setattr(npllm.data, "get_batch", get_batch)
    run = tmp_path / "run"
    capsys.readouterr()
    rc = train(data_dir, run, "--max-iters", "30")
    err = capsys.readouterr().err
    assert rc == 130 and "stopped at iteration 13" in err and "--resume" in err
    assert load_checkpoint(run, "last").info["iter"] == 13
    monkeypatch.setattr(npllm.data, "get_batch", real)
    assert cli.main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    a, b = load_checkpoint(straight, "last"), load_checkpoint(run, "last")
    assert b.info["iter"] == 30
    for k in a.model_state:
        assert np.array_equal(a.model_state[k], b.model_state[k]), k
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_an_unwritable_out_is_one_line(corpus_file, tmp_path, capsys, command):
    args = ["--corpus", str(corpus_file), "--out", "/proc/npllm-test/x"]
    rc = cli.main([command, *args, *(TINY if command == "train" else [])])
    line = one_line_error(capsys, 2, rc)
    assert "cannot write to --out /proc/npllm-test/x" in line


def chat_lines(n):
    words = "to be or not that is the question whether tis nobler in mind".split()
    rng = np.random.default_rng(0)
    for _ in range(n):
        q, a = " ".join(rng.choice(words, 4)), " ".join(rng.choice(words, 6)) + "."
        yield json.dumps(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )


def test_init_from_fine_tunes_a_text_model_on_chat_data(data_dir, tmp_path, capsys):
    base = tmp_path / "base"
    assert train(data_dir, base, "--max-iters", "20") == 0
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(chat_lines(60)) + "\n")
    chat = tmp_path / "chat"
    prep = ["prepare", "--corpus", str(src), "--chat", "--out", str(chat)]
    assert cli.main([*prep, "--tokenizer-from", str(base)]) == 0
    base_tok, chat_tok = (
        load_tokenizer(data_dir / "tokenizer.json"),
        load_tokenizer(chat / "tokenizer.json"),
    )
    assert chat_tok.vocab_size == base_tok.vocab_size + 3
    assert chat_tok.encode("to be") == base_tok.encode("to be")
    # the weights: every old row of the embedding as trained, the new rows a fresh init
    src_ck = load_checkpoint(base, "best")
    cfg = GPTConfig(**{**src_ck.info["model_config"], "vocab_size": chat_tok.vocab_size})
    model = GPT(cfg, seed=5)
    fresh = model.state_dict()["transformer.wte.weight"].copy()
    assert init_weights(base, model, chat_tok) == "best"
    wte = model.state_dict()["transformer.wte.weight"]
    old = src_ck.model_state["transformer.wte.weight"]
    assert np.array_equal(wte[: len(old)], old) and np.array_equal(
        wte[len(old) :], fresh[len(old) :]
    )
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    # end to end, and a model flag is refused (the shape is the base run's)
    run = tmp_path / "tuned"
    args = ["train", "--data", str(chat), "--out", str(run), "--init-from", str(base), "--quiet"]
    assert cli.main([*args, "--max-iters", "10", "--eval-iters", "2", "--batch-size", "4"]) == 0
    info = load_checkpoint(run, "last").info
    assert info["init_from"]["run"] == str(base.resolve())
    assert info["model_config"]["vocab_size"] == chat_tok.vocab_size
    capsys.readouterr()
    rc = cli.main([*args, "--overwrite", "--n-layer", "3"])
    assert "cannot change with --init-from" in one_line_error(capsys, 2, rc)
    # data tokenized another way is refused with the fix
    other = tmp_path / "other"
    assert cli.main(["prepare", "--corpus", str(src), "--chat", "--out", str(other)]) == 0
    with pytest.raises(DataError, match="--tokenizer-from"):
        init_weights(base, GPT(cfg), load_tokenizer(other / "tokenizer.json"))
