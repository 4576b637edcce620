"""A run as a Hugging Face folder: `config.json` (`model_type: gpt2`, or `llama` /
`mistral` for the Llama family), `model.safetensors`, `generation_config.json`, and
`tokenizer.json` with `tokenizer_config.json` (special tokens, the ChatML template when
the run has the chat tokens), so that `transformers.AutoModelForCausalLM.from_pretrained`
and `AutoTokenizer.from_pretrained` load it.

The Llama family (RoPE, RMSNorm, SwiGLU) already carries transformers' names and layouts
(`model.layers.{i}.self_attn.q_proj.weight`, nn.Linear's (out, in)): its weights go as
they are, with a LlamaConfig (MistralConfig when it has a sliding window) describing them.

npllm's state-dict names are nanoGPT's, which are transformers' GPT-2 names; the block
projections (`c_attn`, `c_proj`, `c_fc`) are GPT-2 `Conv1D`s there, whose weight is stored
(in, out), the transpose of npllm's Linear. GPT-2 has every bias: a model trained without
them is written with zero biases, which computes the same thing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from npllm import arch
from npllm.chat import CHAT_SPECIALS, ENDOFTEXT, IM_END, IM_START
from npllm.export import gpt2_family
from npllm.export.tokenizer import hf_tokenizer_json
from npllm.io import ensure_writable_dir, write_bytes_atomic, write_json_atomic

# npllm activation -> transformers' ACT2FN name (gelu_new is GPT-2's tanh approximation)
HF_ACTIVATIONS = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def gpt2_tensors(config: Any, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every GPT-2 tensor in npllm's layout (Linear weights (out, in)) as float32: missing
    biases as zeros, `lm_head.weight` only when it is not the token embedding."""
    n = arch.naming(config)
    out = {k: np.asarray(v, np.float32) for k, v in state.items() if k != "lm_head.weight"}
    if not config.tie_embeddings:
        out["lm_head.weight"] = np.asarray(state["lm_head.weight"], np.float32)
    norms = [f"{n.block(i)}.{p}" for i in range(config.n_layer) for p in (n.norm_1, n.norm_2)]
    norms.append(f"{n.root}.{n.norm_f}")
    for prefix in norms + [w[: -len(".weight")] for w in arch.linear_names(config)]:
        rows = out[f"{prefix}.weight"].shape[0]
        out.setdefault(f"{prefix}.bias", np.zeros(rows, np.float32))
    return out


def special_roles(tokenizer: Any) -> dict[str, str]:
    """bos/eos/pad token texts: <|endoftext|> begins and pads, <|im_end|> (a chat model)
    or <|endoftext|> ends."""
    sp = tokenizer.specials
    roles = {}
    if ENDOFTEXT in sp:
        roles.update(bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT)
    if IM_END in sp:
        roles["eos_token"] = IM_END
    return roles


def has_chat(tokenizer: Any) -> bool:
    return IM_START in tokenizer.specials and IM_END in tokenizer.specials


def hf_config(config: Any, tokenizer: Any) -> dict[str, Any]:
    roles = special_roles(tokenizer)
    sp = tokenizer.specials
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.hidden,
        "activation_function": HF_ACTIVATIONS[config.activation],
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": bool(config.tie_embeddings),
        "bos_token_id": sp.get(roles.get("bos_token")),
        "eos_token_id": sp.get(roles.get("eos_token")),
        "use_cache": True,
        "torch_dtype": "float32",
    }


def llama_config(config: Any, tokenizer: Any) -> dict[str, Any]:
    """transformers' LlamaConfig (MistralConfig with a sliding window) of a RoPE model."""
    from npllm.errors import ConfigError

    c = config
    why = None
    if c.norm != "rmsnorm":
        why = "it uses LayerNorm"
    elif arch.activation(c) != "swiglu":
        why = f"its MLP is a plain {c.activation} one, not SwiGLU"
    elif c.sliding_window and c.bias:
        why = "it has biases and a sliding window (Mistral has no biases)"
    if why:
        raise ConfigError(
            f"cannot export to Hugging Face: this RoPE model is not a Llama ({why}); "
            "transformers' Llama has RMSNorm and a SwiGLU MLP"
        )
    scaling = dict(c.rope_scaling or {})
    rope = {"rope_type": "default", **scaling, "rope_theta": c.rope_theta}
    # transformers scales dynamic NTK from max_position_embeddings, npllm from
    # original_max_position_embeddings (tests/model/test_llama.py)
    max_pos = scaling.get("original_max_position_embeddings", c.block_size)
    if rope["rope_type"] == "yarn":
        max_pos = c.block_size
    roles = special_roles(tokenizer)
    out = {
        "architectures": ["MistralForCausalLM" if c.sliding_window else "LlamaForCausalLM"],
        "model_type": "mistral" if c.sliding_window else "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "intermediate_size": c.hidden,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head or c.n_head,
        "head_dim": c.n_embd // c.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": max_pos,
        "rms_norm_eps": c.norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": bool(c.tie_embeddings),
        "bos_token_id": tokenizer.specials.get(roles.get("bos_token")),
        "eos_token_id": tokenizer.specials.get(roles.get("eos_token")),
        "torch_dtype": "float32",
    }
    if c.sliding_window:
        out["sliding_window"] = c.sliding_window
    else:
        out.update(attention_bias=bool(c.bias), mlp_bias=bool(c.bias))
    return out


def write_hf(config: Any, state: dict[str, np.ndarray], tokenizer: Any, out: str | os.PathLike):
    """Write the Hugging Face folder `out` (see the module docstring); returns its path."""
    from safetensors.numpy import save

    if config.pos_embedding == "rope":
        cfg = llama_config(config, tokenizer)
        skip = "lm_head.weight" if config.tie_embeddings else None
        tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in state.items() if k != skip}
    else:
        gpt2_family(config, "Hugging Face GPT-2")
        cfg = hf_config(config, tokenizer)
        conv1d = set(arch.linear_names(config))
        tensors = {
            k: np.ascontiguousarray(v.T if k in conv1d else v)
            for k, v in gpt2_tensors(config, state).items()
        }
    out = ensure_writable_dir(out, "--out")
    write_bytes_atomic(out / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    write_json_atomic(out / "config.json", cfg)
    generation = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
    if IM_END in tokenizer.specials and ENDOFTEXT in tokenizer.specials:
        generation["eos_token_id"] = [tokenizer.specials[IM_END], tokenizer.specials[ENDOFTEXT]]
    write_json_atomic(out / "generation_config.json", generation)
    write_tokenizer(tokenizer, out, config.block_size)
    return out


def write_tokenizer(tokenizer: Any, out: Path, max_length: int) -> None:
    write_json_atomic(out / "tokenizer.json", hf_tokenizer_json(tokenizer))
    tc: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        **special_roles(tokenizer),
    }
    extra = [t for t in tokenizer.specials if t not in CHAT_SPECIALS]
    if extra:
        tc["additional_special_tokens"] = extra
    if has_chat(tokenizer):
        tc["chat_template"] = CHATML_TEMPLATE
    write_json_atomic(out / "tokenizer_config.json", tc)
