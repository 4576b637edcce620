"""A run as one GGUF file for llama.cpp's `gpt2` architecture (a Llama-family run: its
`llama` architecture), written with the `gguf` package: the hyperparameters, the
tokenizer (byte-level BPE tokens and merges, the specials as control tokens, the `gpt-2`
pre-tokenizer, the ChatML template of a chat model) and the tensors, as F32, Q8_0 or Q4_0
(`npllm.quant.q4_0_blocks`: npllm's int4 bytes).

Tensor types go through `TENSOR_TYPES`: a name (`--quantize`) -> the GGML type and the
function that packs a float32 (rows, cols) matrix into its blocks. Only the matmul
weights take it (token embedding, output, the blocks' projections); norms, biases and the
position embedding stay F32, as llama.cpp's own converter leaves them. A matrix whose rows
do not divide into the type's blocks stays F32 too. Another type (Q4_0 from int4 weights,
say) is one more entry.

Q8_0 is ggml's `block_q8_0`: each run of 32 weights of a row is one block of 34 bytes, a
float16 scale d = max|x| / 127 and 32 int8 values round(x / d) (computed as x * (1/d) and
rounded half away from zero, as `quantize_row_q8_0_ref` in ggml-quants.c does), so that
llama.cpp reads back d * q.

What llama.cpp's gpt2 graph computes is fixed: GELU (tanh approximation), every bias,
LayerNorm, learned positions. A model without biases is written with zero biases (the
same function); a ReLU or exact-GELU MLP, which that graph cannot compute, is refused, as
is a char-level tokenizer (llama.cpp's BPE works on bytes) or a pre-split pattern other
than GPT-2's (llama.cpp's `gpt-2` pre-tokenizer is GPT-2's own regex).

A Llama-family run (RoPE, RMSNorm, SwiGLU, grouped-query attention, linear RoPE scaling)
goes to llama.cpp's `llama` graph. transformers' RoPE, which npllm follows, turns channel
i of a head with channel i + hs/2; llama.cpp's llama graph turns 2i with 2i + 1. So the q
and k projections' rows are reordered per head, as llama.cpp's own converter does, and
llama.cpp rotates the same pairs by the same angles. A sliding window or another RoPE
scaling is refused.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from npllm import arch
from npllm.errors import ConfigError
from npllm.export import gpt2_family, require
from npllm.export.hf import CHATML_TEMPLATE, gpt2_tensors, has_chat, special_roles
from npllm.export.tokenizer import bpe_vocab_and_merges
from npllm.quant import q4_0_blocks
from npllm.tokenizers import GPT2_SPLIT_PATTERN, BPETokenizer

QK8_0 = 32  # weights per Q8_0 block


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf, exactly: |x| - floor(|x|) is exact in float32, so the half test is too."""
    a = np.abs(x)
    f = np.floor(a)
    return np.copysign(f + (a - f >= 0.5), x)


def q8_0_blocks(w: np.ndarray) -> np.ndarray:
    """A float32 (rows, cols) matrix, cols a multiple of 32, as ggml Q8_0 blocks: uint8
    (rows, cols / 32 * 34), each block its float16 scale then 32 int8 values."""
    rows, cols = w.shape
    blocks = np.asarray(w, np.float32).reshape(rows * cols // QK8_0, QK8_0)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)  # (n, 1) float32
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = _round_half_away(blocks * inv).astype(np.int8)  # |x * (1/d)| <= 127
    out = np.concatenate([d.astype("<f2").view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(rows, cols // QK8_0 * (2 + QK8_0))


def _types() -> dict[str, tuple[Any, int, Callable[[np.ndarray], np.ndarray] | None]]:
    """--quantize name -> (GGML tensor type, llama.cpp file type, packer; None: float32)."""
    gguf = require("gguf", "GGUF")
    T, FT = gguf.GGMLQuantizationType, gguf.LlamaFileType

    return {
        "f32": (T.F32, FT.ALL_F32, None),
        "q8_0": (T.Q8_0, FT.MOSTLY_Q8_0, q8_0_blocks),
        "q4_0": (T.Q4_0, FT.MOSTLY_Q4_0, q4_0_blocks),  # npllm's int4 bytes (npllm.quant)
    }


TENSOR_TYPES = ("f32", "q8_0", "q4_0")


def gguf_name(name: str, config: Any) -> str:
    """npllm's tensor name -> llama.cpp's (gpt2 or llama architecture)."""
    n = arch.naming(config)
    top = {
        n.top("embed"): "token_embd.weight",
        n.top("pos"): "position_embd.weight",
        f"{n.root}.{n.norm_f}.weight": "output_norm.weight",
        f"{n.root}.{n.norm_f}.bias": "output_norm.bias",
        "lm_head.weight": "output.weight",
    }
    if name in top:
        return top[name]
    i, rest = name[len(f"{n.root}.{n.layers}.") :].split(".", 1)
    part, kind = rest.rsplit(".", 1)
    parts = {
        n.norm_1: "attn_norm",
        f"{n.attn}.{n.attn_out}": "attn_output",
        n.norm_2: "ffn_norm",
        f"{n.mlp}.{n.up}": "ffn_up",
        f"{n.mlp}.{n.gate}": "ffn_gate",
        f"{n.mlp}.{n.down}": "ffn_down",
    }
    qkv = ("attn_qkv",) if len(n.qkv) == 1 else ("attn_q", "attn_k", "attn_v")
    parts.update({f"{n.attn}.{q}": g for q, g in zip(n.qkv, qkv)})
    return f"blk.{i}.{parts[part]}.{kind}"


def _unrotate_halves(w: np.ndarray, heads: int) -> np.ndarray:
    """q or k projection rows (heads * hs, ...) reordered from transformers' RoPE, which
    turns channel i with channel i + hs/2, to llama.cpp's, which turns 2i with 2i + 1
    (convert_hf_to_gguf.py's `permute`): the same rotation of the same pairs."""
    hs = w.shape[0] // heads
    return np.ascontiguousarray(
        w.reshape(heads, 2, hs // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def llama_tensors(config: Any, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Llama family's tensors for llama.cpp's llama graph: q and k rows reordered for
    its RoPE, lm_head only when untied."""
    n = arch.naming(config)
    out = {}
    for k, v in state.items():
        if k == "lm_head.weight" and config.tie_embeddings:
            continue
        v = np.asarray(v, np.float32)
        if f".{n.attn}.{n.qkv[0]}." in k:
            v = _unrotate_halves(v, config.n_head)
        elif f".{n.attn}.{n.qkv[1]}." in k:
            v = _unrotate_halves(v, config.n_kv_head or config.n_head)
        out[k] = v
    return out


def check_exportable(config: Any, tokenizer: Any) -> None:
    if config.pos_embedding == "rope":
        _check_llama(config)
    else:
        gpt2_family(config, "GGUF")
    if config.pos_embedding != "rope" and config.activation != "gelu":
        raise ConfigError(
            f"cannot export to GGUF: llama.cpp's gpt2 graph computes GELU (tanh) and this "
            f"model's MLP uses {config.activation}; export it to hf or onnx instead"
        )
    if not isinstance(tokenizer, BPETokenizer):
        raise ConfigError(
            "cannot export to GGUF: llama.cpp tokenizes byte-level BPE and this run has a "
            "char tokenizer; train with --tokenizer bpe (or export to hf or onnx)"
        )
    if not tokenizer.merges:
        raise ConfigError(
            "cannot export to GGUF: the BPE tokenizer has no merges, and llama.cpp refuses a "
            "BPE vocabulary without them; train the tokenizer with a larger vocabulary"
        )
    if tokenizer.pattern != GPT2_SPLIT_PATTERN:
        raise ConfigError(
            "cannot export to GGUF: the tokenizer splits text with its own pattern, and "
            "llama.cpp's gpt-2 pre-tokenizer splits by GPT-2's"
        )


def _check_llama(config: Any) -> None:
    c = config
    why = None
    if c.norm != "rmsnorm" or arch.activation(c) != "swiglu":
        why = "llama.cpp's llama graph has RMSNorm and a SwiGLU MLP"
    elif c.sliding_window:
        why = "llama.cpp's llama graph attends to the whole context (no sliding window)"
    elif (c.rope_scaling or {}).get("rope_type", "linear") != "linear":
        why = f"npllm writes linear RoPE scaling only, not {c.rope_scaling['rope_type']}"
    if why:
        raise ConfigError(f"cannot export this RoPE model to GGUF: {why}; export it to hf")


def write_gguf(
    config: Any,
    state: dict[str, np.ndarray],
    tokenizer: Any,
    out: str | os.PathLike,
    quantize: str = "f32",
) -> Path:
    """Write the GGUF file `out` (atomically: a temp file renamed); returns its path."""
    check_exportable(config, tokenizer)
    gguf = require("gguf", "GGUF")
    if quantize not in TENSOR_TYPES:
        raise ConfigError(f"unknown GGUF tensor type {quantize!r}; use {', '.join(TENSOR_TYPES)}")
    qtype, ftype, pack = _types()[quantize]
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; pass the path of the .gguf file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        llama = config.pos_embedding == "rope"
        w = gguf.GGUFWriter(tmp, "llama" if llama else "gpt2")
        w.add_name(out.stem)
        w.add_context_length(config.block_size)
        w.add_embedding_length(config.n_embd)
        w.add_feed_forward_length(config.hidden)
        w.add_block_count(config.n_layer)
        w.add_head_count(config.n_head)
        if llama:
            w.add_head_count_kv(config.n_kv_head or config.n_head)
            w.add_layer_norm_rms_eps(config.norm_eps)
            w.add_rope_freq_base(config.rope_theta)
            w.add_rope_dimension_count(config.n_embd // config.n_head)
            w.add_vocab_size(config.vocab_size)
            if config.rope_scaling:
                w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                w.add_rope_scaling_factor(config.rope_scaling["factor"])
        else:
            w.add_layer_norm_eps(config.norm_eps)
        w.add_file_type(ftype)
        _add_tokenizer(w, tokenizer, config.vocab_size)
        matmul = {arch.naming(config).top("embed"), "lm_head.weight", *arch.linear_names(config)}
        tensors = llama_tensors(config, state) if llama else gpt2_tensors(config, state)
        for name, t in tensors.items():
            if pack is not None and name in matmul and t.shape[1] % QK8_0 == 0:
                w.add_tensor(gguf_name(name, config), pack(t), raw_dtype=qtype)
            else:
                w.add_tensor(gguf_name(name, config), np.ascontiguousarray(t, np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _add_tokenizer(w: Any, tokenizer: BPETokenizer, vocab_size: int) -> None:
    from gguf import TokenType

    tokens, merges = bpe_vocab_and_merges(tokenizer)
    types = [TokenType.NORMAL] * tokenizer.base_vocab_size + [TokenType.CONTROL] * len(
        tokenizer.specials
    )
    # a model may have more rows than the tokenizer has tokens (a padded vocabulary)
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    roles = special_roles(tokenizer)
    if "bos_token" in roles:
        w.add_bos_token_id(tokenizer.specials[roles["bos_token"]])
    if "eos_token" in roles:
        w.add_eos_token_id(tokenizer.specials[roles["eos_token"]])
    if "pad_token" in roles:
        w.add_pad_token_id(tokenizer.specials[roles["pad_token"]])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    if has_chat(tokenizer):
        w.add_chat_template(CHATML_TEMPLATE)
