"""`npllm export --format gguf` judged by llama.cpp (llama-cpp-python): it loads the file,
tokenizes text to npllm's ids, gives npllm's logits (F32 within 1e-3 of the largest
logit; Q8_0 within the rounding the format implies, see below) and continues a prompt
greedily with npllm's 32 tokens. The Q8_0 packing is checked byte for byte against the
`gguf` package's port of ggml's reference quantizer."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize
from llama_cpp import Llama

from npllm.cli import main
from npllm.export.gguf import q8_0_blocks, write_gguf
from npllm.generate import generate
from tests.export.conftest import EXAMPLE, perturbed, save_run, tiny_config, trained


def llama(path, n_ctx: int, one_token_per_call: bool = False) -> Llama:
    # One token per call for Q8_0: llama-cpp-python 0.3.36's batched Q8_0 path crashes on
    # CPUs with AMX (its repacked weight buffers); decoding a token at a time does not.
    batch = {"n_batch": 1, "n_ubatch": 1} if one_token_per_call else {}
    return Llama(str(path), logits_all=True, n_ctx=n_ctx, n_threads=2, verbose=False, **batch)


def llama_logits(llm: Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def test_q8_0_blocks_are_ggml_reference_bytes():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (6, 96)).astype(np.float32)
    w[0, :32] = 0  # an all-zero block: scale 0, values 0
    d = np.abs(w[1, 32:64]).max() / np.float32(127)
    w[1, 40] = np.float32(2.5) * d  # exactly half way: rounds away from zero
    w[2, :32] = np.float32(1e-30)  # a scale below float16's range
    ours = q8_0_blocks(w)
    assert ours.dtype == np.uint8 and ours.shape == (6, 3 * 34)
    assert np.array_equal(ours, quantize(w, GGMLQuantizationType.Q8_0))
    # each weight within d/2 of d * q, plus the float16 rounding of d (2^-11 relative)
    # times |q| <= 127; a scale that float16 flushes to zero loses its (tiny) block
    back = dequantize(ours, GGMLQuantizationType.Q8_0)
    d = np.repeat(np.abs(w.reshape(-1, 32)).max(1) / 127, 32).reshape(w.shape)
    assert np.all(np.abs(back - w) <= d * (0.5 + 127 * 2.0**-11) + 1e-29)


@pytest.fixture(scope="module")
def gguf_model(bpe):
    # a padded vocabulary (4 rows past the tokenizer's), no biases: both must survive
    return trained(tiny_config(bpe.vocab_size + 4, n_embd=64, block_size=128, bias=False), bpe)


def test_llama_cpp_reads_f32_tokens_logits_and_greedy(tmp_path, bpe, gguf_model):
    path = write_gguf(gguf_model.config, gguf_model.state_dict(), bpe, tmp_path / "m.gguf")
    llm = llama(path, gguf_model.config.block_size)
    ids = bpe.encode(EXAMPLE, allowed_special="all")
    assert llm.tokenize(EXAMPLE.encode(), add_bos=False, special=True) == ids
    assert llm.detokenize(ids, special=True).decode() == EXAMPLE
    assert llm.metadata["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert llm.token_eos() == bpe.specials["<|im_end|>"]
    prompt = ids[:64]
    ours = gguf_model(np.array([prompt]))[0].data[0]
    theirs = llama_logits(llm, prompt)
    assert np.abs(theirs - ours).max() <= 1e-3 * np.abs(ours).max()
    new, _ = generate(gguf_model, prompt, 32, greedy=True)
    llm.reset()
    theirs_new = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        theirs_new.append(token)
        if len(theirs_new) == 32:
            break
    assert theirs_new == list(new)
    assert len(set(theirs_new)) > 8  # a varied text, not one token repeated


def test_llama_cpp_reads_q8_0_within_its_rounding(tmp_path, bpe, gguf_model):
    """Q8_0 rounds each weight to within d/2 of itself (d = its block's max / 127), and
    llama.cpp's Q8_0 dot products round the activations to Q8_0 blocks as well: two
    relative errors of at most 1/254 per product, compounded over 2 layers plus the head.
    We allow 2% of the largest logit, against npllm's float model and against npllm run
    on the dequantized Q8_0 weights (which isolates the activation rounding)."""
    m = gguf_model
    path = write_gguf(m.config, m.state_dict(), bpe, tmp_path / "q.gguf", "q8_0")
    reader = GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_qkv.weight"] == GGMLQuantizationType.Q8_0
    assert types["token_embd.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
    assert (
        path.stat().st_size
        < 0.4 * write_gguf(m.config, m.state_dict(), bpe, tmp_path / "f.gguf").stat().st_size
    )
    prompt = bpe.encode(EXAMPLE, allowed_special="all")[:48]
    theirs = llama_logits(llama(path, m.config.block_size, one_token_per_call=True), prompt)
    ours = m(np.array([prompt]))[0].data[0]
    scale = np.abs(ours).max()
    assert np.abs(theirs - ours).max() <= 0.02 * scale
    # npllm on the very weights llama.cpp holds: only the activation rounding remains
    deq = perturbed(m.config, 7)
    deq.load_state_dict(m.state_dict())
    sd = deq.state_dict()
    for t in reader.tensors:
        if t.tensor_type == GGMLQuantizationType.Q8_0:
            w = dequantize(t.data, GGMLQuantizationType.Q8_0)
            name = {"token_embd.weight": "transformer.wte.weight"}.get(t.name)
            if name is None:
                i, part = t.name.split(".")[1:3]
                name = {
                    "attn_qkv": f"transformer.h.{i}.attn.c_attn.weight",
                    "attn_output": f"transformer.h.{i}.attn.c_proj.weight",
                    "ffn_up": f"transformer.h.{i}.mlp.c_fc.weight",
                    "ffn_down": f"transformer.h.{i}.mlp.c_proj.weight",
                }[part]
            sd[name][...] = w
    deq_logits = deq(np.array([prompt]))[0].data[0]
    assert np.abs(theirs - deq_logits).max() <= 0.01 * scale
    assert np.abs(theirs - deq_logits).max() < np.abs(theirs - ours).max()


def test_export_cli_gguf_and_its_refusals(tmp_path, bpe, char_tok, bpe_run, capsys):
    out = tmp_path / "m.gguf"
    assert main(["export", str(bpe_run), "--format", "gguf", "--out", str(out)]) == 0
    assert out.is_file() and GGUFReader(out).fields["general.architecture"]
    args = ["export", str(bpe_run), "--format", "gguf", "--out", str(tmp_path / "q.gguf")]
    assert main([*args, "--quantize", "q8_0"]) == 0
    cases = {
        "relu": (perturbed(tiny_config(bpe.vocab_size, activation="relu"), 1), bpe, "GELU"),
        "char": (perturbed(tiny_config(char_tok.vocab_size), 1), char_tok, "char tokenizer"),
    }
    for name, (model, tok, said) in cases.items():
        save_run(tmp_path / name, model, tok)
        capsys.readouterr()
        code = main(["export", str(tmp_path / name), "--format", "gguf", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert main([*args, "--quantize", "int8"]) == 2


def test_a_missing_export_package_is_named_with_the_extra(tmp_path, bpe_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    code = main(["export", str(bpe_run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'npllm[export]'" in err
    assert not (tmp_path / "m.gguf").exists()


def test_llama_family_runs_in_llama_cpps_llama_graph(tmp_path, bpe):
    """Multi-query attention, an untied head, linear RoPE scaling; RoPE's pairs
    reordered for llama.cpp: F32 logits within 1e-3 of the largest, the same 32 greedy
    tokens, Q8_0 within 2%."""
    options = {"n_kv_head": 1, "tie_embeddings": False}
    options["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    llama_shape = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    config = tiny_config(
        bpe.vocab_size, n_embd=64, mlp_hidden=96, block_size=128, **llama_shape, **options
    )
    model = trained(config, bpe, steps=100)
    prompt = bpe.encode(EXAMPLE, allowed_special="all")[:64]
    ours = model(np.array([prompt]))[0].data[0]
    path = write_gguf(config, model.state_dict(), bpe, tmp_path / "l.gguf")
    llm = llama(path, config.block_size)
    assert llm.metadata["general.architecture"] == "llama"
    assert np.abs(llama_logits(llm, prompt) - ours).max() <= 1e-3 * np.abs(ours).max()
    new, _ = generate(model, prompt, 32, greedy=True)
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        theirs.append(token)
        if len(theirs) == 32:
            break
    assert theirs == list(new) and len(set(theirs)) > 8
    q = write_gguf(config, model.state_dict(), bpe, tmp_path / "q.gguf", "q8_0")
    q_logits = llama_logits(llama(q, config.block_size, one_token_per_call=True), prompt)
    assert np.abs(q_logits - ours).max() <= 0.02 * np.abs(ours).max()
