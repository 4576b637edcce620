"""Q4_0 export (`npllm export --format gguf --quantize q4_0`): the blocks are npllm's int4
weights byte for byte (the gguf package's ggml port dequantizes them to exactly
`Int4Weight.dequantize()`), and llama.cpp (llama-cpp-python) running the file gives npllm's
int4 logits within the rounding of its Q8_0 activations."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize
from llama_cpp import Llama

from npllm.cli import main
from npllm.generate import Decoder
from npllm.quant import load_weights, q4_0_blocks, quantize_int4, quantize_state_dict
from tests.export.conftest import EXAMPLE, save_run, tiny_config, trained


def test_q4_0_blocks_are_npllms_int4_bytes():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (6, 96)).astype(np.float32)
    w[0, :32] = 0  # an all-zero block
    ours = q4_0_blocks(w)
    assert ours.dtype == np.uint8 and ours.shape == (6, 3 * 18)
    back = dequantize(ours, GGMLQuantizationType.Q4_0)
    np.testing.assert_array_equal(back, quantize_int4(w, 32).dequantize())
    # ggml's own quantizer picks the same codes but where float16's rounding of the scale
    # moves a weight across a rounding boundary (it rounds against the float32 scale)
    theirs = quantize(w, GGMLQuantizationType.Q4_0)
    assert (theirs == ours).mean() > 0.97


def test_llama_cpp_runs_q4_0_as_npllms_int4(tmp_path, bpe, capsys):
    m = trained(tiny_config(bpe.vocab_size + 4, n_embd=64, block_size=128, bias=False), bpe)
    run = save_run(tmp_path / "run", m, bpe)
    path = tmp_path / "q4.gguf"
    assert (
        main(["export", str(run), "--format", "gguf", "--quantize", "q4_0", "--out", str(path)])
        == 0
    )
    capsys.readouterr()
    types = {t.name: t.tensor_type for t in GGUFReader(path).tensors}
    assert types["blk.0.attn_qkv.weight"] == GGMLQuantizationType.Q4_0
    assert types["token_embd.weight"] == GGMLQuantizationType.Q4_0
    # npllm's int4 model over the same tensors: every Linear and the embedding int4
    sd = m.state_dict()
    dec = Decoder(m.config, load_weights(quantize_state_dict(sd, bits=4, embedding_bits=4)))
    prompt = bpe.encode(EXAMPLE, allowed_special="all")[:48]
    ours = dec.forward(np.array([prompt]))[0]  # (T, V)
    # one token per call (llama-cpp-python's batched path crashes on AMX CPUs, see
    # tests/export/test_gguf.py)
    llm = Llama(
        str(path), logits_all=True, n_ctx=128, n_threads=2, verbose=False, n_batch=1, n_ubatch=1
    )
    llm.eval(prompt)
    theirs = np.array(llm.scores[: len(prompt)], dtype=np.float32)
    scale = np.abs(ours).max()
    # llama.cpp rounds the activations to Q8_0 blocks (relative 1/254 per product) in
    # every product of 2 layers and the head; the weights are identical
    err = np.abs(theirs - ours).max()
    assert err <= 0.02 * scale
    # and closer to npllm's int4 than to the float model it came from
    assert err < np.abs(theirs - m(np.array([prompt]))[0].data[0]).max()
