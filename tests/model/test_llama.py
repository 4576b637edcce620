"""The Llama family (pos_embedding="rope", rmsnorm, swiglu, n_kv_head, sliding_window,
rope_scaling, untied embeddings) against transformers' LlamaForCausalLM and
MistralForCausalLM built from random configs (nothing downloaded): the same weights load
by name, logits agree within 1e-4, and the whole model's gradients equal the PyTorch
model's. Then the KV-cache decoder, fused and NumPy, against the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from npllm import kernels
from npllm.autograd import no_grad
from npllm.decoder import Decoder
from npllm.errors import ConfigError
from npllm.generate import generate
from npllm.gpt import GPT, GPTConfig
from npllm.quant import load_weights, quantize_state_dict
from tests.model.helpers import perturbed

CASES = {
    "gqa-default": dict(n_head=4, n_kv_head=2),
    "mqa-linear-untied": dict(
        n_head=4,
        n_kv_head=1,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        tie_embeddings=False,
    ),
    "dynamic-ntk-bias": dict(
        rope_scaling={"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 8},
        bias=True,
    ),
    "yarn": dict(
        rope_scaling={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 4,
            "beta_fast": 8.0,
            "beta_slow": 1.0,
        },
        n_kv_head=2,
    ),
    "mistral-window": dict(n_kv_head=2, sliding_window=5),
}


def llama_config(**overrides) -> GPTConfig:
    kw = dict(
        vocab_size=61,
        block_size=16,
        n_layer=2,
        n_head=4,
        n_embd=32,
        mlp_hidden=40,
        bias=False,
        pos_embedding="rope",
        rope_theta=500.0,
        norm="rmsnorm",
        mlp="swiglu",
    )
    kw.update(overrides)
    return GPTConfig(**kw)


def hf_model(c: GPTConfig, dtype=torch.float32):
    """transformers' model for an npllm config: Mistral when it has a window, else Llama."""
    rope = {"rope_type": "default", **(c.rope_scaling or {}), "rope_theta": c.rope_theta}
    # dynamic NTK: transformers scales from max_position_embeddings (npllm: from
    # original_max_position_embeddings, for the block_size the model runs)
    max_pos = (c.rope_scaling or {}).get("original_max_position_embeddings", c.block_size)
    if rope["rope_type"] == "yarn":
        max_pos = c.block_size
    common = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        intermediate_size=c.hidden,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head or c.n_head,
        max_position_embeddings=max_pos,
        rms_norm_eps=c.norm_eps,
        rope_parameters=rope,
        tie_word_embeddings=c.tie_embeddings,
        attn_implementation="eager",
    )
    if c.sliding_window:
        model = MistralForCausalLM(MistralConfig(sliding_window=c.sliding_window, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(attention_bias=c.bias, mlp_bias=c.bias, **common))
    return model.to(dtype).eval()


def load_into(hf, model: GPT, dtype=torch.float32):
    sd = {k: torch.tensor(v, dtype=dtype) for k, v in model.state_dict().items()}
    theirs = set(hf.state_dict())
    assert set(sd) == theirs, set(sd) ^ theirs  # the same names, nothing left over
    hf.load_state_dict(sd, strict=True)
    return hf


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case):
    c = llama_config(**CASES[case])
    model = perturbed(GPT(c, seed=1), scale=0.05).eval()
    hf = load_into(hf_model(c), model)
    idx = np.random.default_rng(2).integers(0, c.vocab_size, (2, c.block_size))
    with no_grad():
        ours = model(idx)[0].data
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", ["gqa-default", "mistral-window", "mqa-linear-untied"])
def test_whole_model_gradients_match_transformers_in_float64(case):
    c = llama_config(**CASES[case])
    model = perturbed(GPT(c, seed=3).to(np.float64), scale=0.1)
    hf = load_into(hf_model(c, torch.float64), model, torch.float64).train()
    idx = np.random.default_rng(4).integers(0, c.vocab_size, (2, c.block_size))
    targets = np.random.default_rng(5).integers(0, c.vocab_size, (2, c.block_size))
    logits, loss = model(idx, targets)
    loss.backward()
    out = hf(torch.tensor(idx))
    ref = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, c.vocab_size), torch.tensor(targets).reshape(-1)
    )
    ref.backward()
    # transformers makes RoPE's angles in float32 even in a float64 model (`.float()` in
    # LlamaRotaryEmbedding): agreement to ~1e-7, not 1e-12; a wrong rule would be O(1) off
    assert abs(loss.item() - ref.item()) < 1e-6
    theirs = dict(hf.named_parameters())
    for name, p in model.named_parameters():
        g = theirs[name].grad.numpy()
        np.testing.assert_allclose(p.grad, g, rtol=0, atol=1e-5 * np.abs(g).max(), err_msg=name)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("quantized", [False, True])
def test_decoder_cached_fused_and_numpy_agree_with_the_model(case, quantized):
    c = llama_config(**CASES[case])
    model = perturbed(GPT(c, seed=5), scale=0.2).eval()
    sd = model.state_dict()
    dec = Decoder(c, load_weights(quantize_state_dict(sd) if quantized else sd))
    idx = np.random.default_rng(6).integers(0, c.vocab_size, (2, c.block_size))
    with no_grad():
        ref = model(idx)[0].data
    tol = dict(rtol=0, atol=0.2 * np.abs(ref).max() if quantized else 1e-4)
    np.testing.assert_allclose(dec.forward(idx), ref, **tol)
    fused, numpy_ = dec.new_cache(2), dec.new_cache(2)
    dec.forward(idx[:, :3], fused)
    dec.forward(idx[:, :3], numpy_)
    for t in range(3, c.block_size):
        got = dec.forward(idx[:, t : t + 1], fused, last_only=True)
        with kernels.use("numpy"):
            want = dec.forward(idx[:, t : t + 1], numpy_, last_only=True)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, ref[:, t], **tol)
    ids, _ = generate(dec, idx[0, :4], 20, greedy=True)  # past the window: crops, rebuilds
    assert ids.shape == (20,)


def test_llama_names_quantize_and_bad_options_are_one_line_errors():
    c = llama_config(n_kv_head=2)
    q = quantize_state_dict(GPT(c).state_dict())
    assert q["model.layers.0.self_attn.k_proj.weight"].dtype == np.int8
    assert q["model.layers.1.mlp.gate_proj.weight"].dtype == np.int8
    assert q["model.norm.weight"].dtype == np.float32
    for bad, word in [
        (dict(n_kv_head=3), "n_kv_head"),
        (dict(norm="batchnorm"), "norm"),
        (dict(mlp="geglu"), "mlp"),
        (dict(pos_embedding="alibi"), "pos_embedding"),
        (dict(rope_scaling={"rope_type": "longrope", "factor": 2.0}), "longrope"),
        (dict(rope_scaling={"rope_type": "linear"}), "factor"),
        (dict(sliding_window=0), "sliding_window"),
        (dict(n_embd=36, n_head=4), "even"),
    ]:
        with pytest.raises(ConfigError, match=word):
            llama_config(**bad)


@pytest.mark.parametrize(
    "overrides",
    [dict(sliding_window=5, n_kv_head=2), dict(block_size=8), dict(block_size=8, sliding_window=6)],
    ids=["window-5", "rope-block-8", "window-6-block-8"],
)
def test_rolling_cache_equals_recomputation_over_three_windows(overrides):
    c = llama_config(**overrides)
    window = min(c.sliding_window or c.block_size, c.block_size)
    model = perturbed(GPT(c, seed=7), scale=0.3).eval()
    dec = Decoder.from_model(model)
    assert dec.new_cache(1).k[0].shape[2] == window  # the cache holds one window
    rng = np.random.default_rng(8)
    context = rng.integers(0, c.vocab_size, (2, 3))
    cache = dec.new_cache(2)
    logits = dec.forward(context, cache, last_only=True)
    for _ in range(3 * window):
        with kernels.use("numpy"):  # recomputation over the whole context, windowed
            full = dec.forward(context)[:, -1]
        np.testing.assert_allclose(logits, full, rtol=1e-4, atol=1e-4)
        nxt = rng.integers(0, c.vocab_size, (2, 1))
        context = np.concatenate([context, nxt], axis=1)
        logits = dec.forward(nxt, cache, last_only=True)  # fused step, rolling
    assert cache.length == context.shape[1] - 1 + 1
    # within the training window, the decoder's recomputation is the model's forward
    with no_grad():
        ref = model(context[:, : c.block_size])[0].data
    np.testing.assert_allclose(dec.forward(context[:, : c.block_size]), ref, atol=1e-4)
    # greedy generation: the rolling cache and recomputation give the same ids
    prompt = context[0, :4]
    cached, _ = generate(dec, prompt, 3 * window, greedy=True)
    recomputed, _ = generate(dec, prompt, 3 * window, greedy=True, use_cache=False)
    assert cached.tolist() == recomputed.tolist()
