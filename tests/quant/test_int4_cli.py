"""`npllm quantize --bits 4`: the int4 checkpoint (codes, float16 scales and minimums),
its report (bytes, val loss, next-token agreement), `npllm sample --quantized` taking the
checkpoint written last, `load_run(quantized="int4")`, and bad input as one line, exit 2."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import cli
from npllm.checkpoint import load_checkpoint
from npllm.data import prepare
from npllm.decoder import Decoder
from npllm.quant import Int4Weight, Int8Weight
from npllm.runs import load_run
from tests.cli.conftest import TINY


def _tiny_32():
    """TINY with a width of 32: one int4 block per row."""
    flags = list(TINY)
    flags[flags.index("--n-embd") + 1] = "32"
    return flags


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("q4run")
    words = "to be or not that is the question whether tis nobler".split()
    rng = np.random.default_rng(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) + "." for _ in range(300)))
    prepare(str(corpus), root / "data")
    argv = ["train", "--data", str(root / "data"), "--out", str(root / "run"), *_tiny_32()]
    assert cli.main([*argv, "--max-iters", "20", "--learning-rate", "1e-2"]) == 0
    return root / "run"


def _sample(run, capsys, *flags):
    argv = ["sample", "--run", str(run), "--prompt", "to be", "--max-new-tokens", "20"]
    assert cli.main([*argv, "--greedy", *flags]) == 0
    return capsys.readouterr().out


def test_quantize_int4_round_trip(run, capsys):
    assert cli.main(["quantize", str(run), "--bits", "4", "--eval-iters", "3"]) == 0
    out = capsys.readouterr().out
    assert "int4 blocks of 32" in out and "x smaller" in out
    assert "val loss" in out and "most likely next token the same at" in out
    ck = load_checkpoint(run, "int4")
    fc = "transformer.h.0.mlp.c_fc.weight"
    assert ck.model_state[fc].dtype == np.uint8 and ck.model_state[fc].shape == (128, 16)
    assert ck.model_state[fc + "_scale"].dtype == np.float16
    assert fc + "_min" not in ck.model_state
    assert ck.model_state["transformer.wte.weight"].dtype == np.int8  # embedding: int8
    q = ck.info["quantization"]
    assert (q["bits"], q["group_size"], q["symmetric"], q["embedding_bits"]) == (4, 32, True, 8)
    # --quantized loads the checkpoint written last: int4 now, int8 after `quantize`
    loaded = load_run(run, quantized=True)
    assert loaded.name == "int4" and isinstance(loaded.model, Decoder)
    assert isinstance(loaded.model.weights.head_weight, Int8Weight)
    greedy4 = _sample(run, capsys, "--quantized")
    assert greedy4.startswith("to be")
    assert cli.main(["quantize", str(run), "--eval-iters", "0"]) == 0
    capsys.readouterr()
    assert load_run(run, quantized=True).name == "int8"
    assert load_run(run, quantized="int4").name == "int4"
    assert _sample(run, capsys, "--quantized").startswith("to be")
    # asymmetric, int4 embedding: minimums stored, every Linear and the embedding int4
    argv = ["quantize", str(run), "--bits", "4", "--asymmetric", "--embedding-bits", "4"]
    assert cli.main([*argv, "--eval-iters", "0"]) == 0
    capsys.readouterr()
    ck = load_checkpoint(run, "int4")
    assert ck.model_state[fc + "_min"].dtype == np.float16
    loaded = load_run(run, quantized=True)
    assert isinstance(loaded.model.weights.embed, Int4Weight)
    assert _sample(run, capsys, "--quantized").startswith("to be")


def test_quantize_int4_bad_input_is_one_line(run, tmp_path, capsys):
    # 32 inputs cannot be cut into blocks of 64
    assert cli.main(["quantize", str(run), "--bits", "4", "--group-size", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "group size 64" in err[0] and "Traceback" not in err[0]
    with pytest.raises(SystemExit) as e:
        cli.main(["quantize", str(run), "--bits", "3"])
    assert e.value.code == 2
    capsys.readouterr()
    assert cli.main(["quantize", str(tmp_path), "--bits", "4"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
