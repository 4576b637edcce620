"""`npllm export --format hf` judged by transformers and tokenizers: the folder loads with
AutoModelForCausalLM / AutoTokenizer, gives npllm's logits within 1e-4, and tokenizes a
varied text to exactly npllm's ids (the chat template too)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from npllm.chat import encode_chat
from npllm.cli import main
from npllm.export.hf import write_hf
from npllm.tokenizers import BPETokenizer, CharTokenizer
from tests.export.conftest import EXAMPLE, MESSAGES, VARIED, perturbed, save_run, tiny_config


def hf_logits(folder, ids: np.ndarray) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"activation": "gelu_exact", "tie_embeddings": False},
        {"activation": "relu", "bias": False, "mlp_hidden": 48, "norm_eps": 1e-6},
    ],
    ids=["gelu-tanh", "gelu-exact-untied", "relu-nobias"],
)
def test_transformers_gives_npllm_logits(tmp_path, bpe, options):
    model = perturbed(tiny_config(bpe.vocab_size, **options), seed=2)
    write_hf(model.config, model.state_dict(), bpe, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    ids = np.random.default_rng(0).integers(0, bpe.vocab_size, (2, 64))
    ours = model(ids)[0].data
    theirs = hf_logits(tmp_path, ids)
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_hf_tokenizers_encode_to_npllm_ids(tmp_path, bpe, char_tok, kind):
    tok = bpe if kind == "bpe" else char_tok
    model = perturbed(tiny_config(tok.vocab_size), seed=3)
    write_hf(model.config, model.state_dict(), tok, tmp_path)
    ours = tok.encode(EXAMPLE, allowed_special="all")
    assert set(ours) >= tok.special_ids  # every special is in the text
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert raw.encode(EXAMPLE).ids == ours
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert auto.encode(EXAMPLE) == ours
    assert auto.decode(ours) == tok.decode(ours) == EXAMPLE
    # the ChatML template renders to npllm's chat ids, generation prompt included
    chat = auto.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    ids = chat["input_ids"] if isinstance(chat, dict) or hasattr(chat, "keys") else chat
    assert list(ids) == encode_chat(tok, MESSAGES, add_generation_prompt=True)[0]
    assert auto.eos_token == "<|im_end|>"


def test_hf_tokenizer_splits_like_python_on_engine_dependent_characters(tmp_path):
    # characters where Python's \w, \d, \s and Oniguruma's differ: numerals that are not
    # digits, combining marks, the separators U+001C-U+001F, non-breaking spaces
    text = "x½y Ⅻ² a\u0301b \x1c\x1d \xa0\u2003z_1 ٣٤ 𝟘 \u200b ok"
    tok = BPETokenizer.train(text * 5 + VARIED, 300)
    model = perturbed(tiny_config(tok.vocab_size), seed=4)
    write_hf(model.config, model.state_dict(), tok, tmp_path)
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for piece in (text, VARIED, text[::-1]):
        assert raw.encode(piece).ids == tok.encode(piece)


def test_export_cli_writes_hf_and_refuses_what_gpt2_cannot_hold(tmp_path, bpe_run, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(bpe_run), "--format", "hf", "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    # a Llama-family run: refused in one line, exit 2
    tok = CharTokenizer.from_text("abc")
    llama = perturbed(tiny_config(tok.vocab_size, pos_embedding="rope", norm="rmsnorm"), 5)
    save_run(tmp_path / "llama", llama, tok)
    capsys.readouterr()
    code = main(["export", str(tmp_path / "llama"), "--format", "hf", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "RoPE" in err and len(err.strip().splitlines()) == 1
    code = main(["export", str(bpe_run), "--format", "hf", "--out", str(out), "--quantize", "q8_0"])
    err = capsys.readouterr().err
    assert code == 2 and "drop it" in err


LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", bias=False, mlp_hidden=40)


@pytest.mark.parametrize(
    "options",
    [
        {"n_kv_head": 2},
        {"n_kv_head": 1, "tie_embeddings": False, "bias": True, "rope_theta": 500.0},
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {"n_kv_head": 2, "sliding_window": 5},
    ],
    ids=["llama-gqa", "llama-mqa-untied-bias", "llama-linear-rope", "mistral-window"],
)
def test_llama_family_exports_as_transformers_llama(tmp_path, bpe, options):
    model = perturbed(tiny_config(bpe.vocab_size, **{**LLAMA, **options}), seed=6)
    write_hf(model.config, model.state_dict(), bpe, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == ("mistral" if "sliding_window" in options else "llama")
    ids = np.random.default_rng(0).integers(0, bpe.vocab_size, (2, 64))
    np.testing.assert_allclose(hf_logits(tmp_path, ids), model(ids)[0].data, atol=1e-4, rtol=0)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert auto.encode(EXAMPLE) == bpe.encode(EXAMPLE, allowed_special="all")
