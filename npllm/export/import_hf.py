"""A Hugging Face GPT-2-family folder (`config.json` with `model_type: gpt2`, weights as
`model.safetensors` or safetensors shards, a byte-level BPE tokenizer as `tokenizer.json`
or `vocab.json` + `merges.txt`) -> an npllm run folder with a `best` checkpoint that
`npllm sample`, `npllm train --init-from` and `npllm export` read.

The weights keep their names (transformers' GPT-2 names are nanoGPT's, which are npllm's);
the `Conv1D` weights of the blocks are transposed to npllm's (out, in). npllm numbers a
BPE vocabulary bytes first, then merges in order, then specials, while a Hugging Face
vocabulary may number them in any order, so the embedding's rows (and an untied
`lm_head`'s) are put in npllm's order; the model computes the same logits, each at its
token's npllm id. Weights stored as `pytorch_model.bin` are a pickle, which npllm never
loads: save the model again with `save_pretrained` (safetensors is its default).

A Llama or Mistral folder (`model_type: llama` / `mistral`) with a byte-level BPE
tokenizer comes in the same way: npllm's Llama family already has transformers' names and
layouts, so only the vocabulary's order changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from npllm import arch
from npllm.checkpoint import save_checkpoint
from npllm.errors import CheckpointError, ConfigError, DataError
from npllm.export.tokenizer import bytes_to_unicode, from_hf_tokenizer_json
from npllm.gpt import GPTConfig

# transformers' ACT2FN names -> npllm's activation (gelu_new, gelu_pytorch_tanh and
# gelu_fast are all the tanh approximation; "gelu" is the exact erf one)
ACTIVATIONS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "gelu": "gelu_exact",
    "relu": "relu",
}
IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias")  # old transformers' causal masks


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing; pass a folder written by `save_pretrained`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def gpt_config(hf: dict[str, Any]) -> GPTConfig:
    """The GPTConfig of a transformers GPT2Config (or LlamaConfig, MistralConfig) as its
    config.json holds it."""
    if hf.get("model_type") in ("llama", "mistral"):
        try:
            return llama_config(hf)
        except KeyError as e:
            raise ConfigError(f"config.json lacks {e}, which a {hf['model_type']} needs") from None
    if hf.get("model_type") != "gpt2":
        raise ConfigError(
            f"the folder holds a {hf.get('model_type')!r} model; import-hf reads GPT-2-family "
            "models (model_type gpt2) and Llama-family ones (llama, mistral)"
        )
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ConfigError(
            f"activation_function {act!r} has no npllm counterpart; "
            f"npllm has {', '.join(ACTIVATIONS)}"
        )
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
        raise ConfigError(
            "the model scales attention other than by 1/sqrt(head size), which npllm's "
            "attention does not do"
        )
    n_embd = hf.get("n_embd", 768)
    return GPTConfig(
        vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        mlp_hidden=hf.get("n_inner") or 4 * n_embd,
        activation=ACTIVATIONS[act],
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def llama_config(hf: dict[str, Any]) -> GPTConfig:
    """The GPTConfig of a LlamaConfig / MistralConfig: RoPE, RMSNorm, SwiGLU."""
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {hf['hidden_act']!r}: npllm's SwiGLU gates with SiLU")
    C, nh = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, C // nh):
        raise ConfigError("the model's head_dim is not hidden_size / num_attention_heads")
    bias = bool(hf.get("attention_bias", False))
    if bias != bool(hf.get("mlp_bias", False)):
        raise ConfigError("attention_bias and mlp_bias differ; npllm has one bias switch")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    rope.pop("type", None)
    if kind != "default":
        rope["rope_type"] = kind
    if kind == "dynamic":  # transformers scales from max_position_embeddings
        rope.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_head=nh,
        n_embd=C,
        mlp_hidden=hf["intermediate_size"],
        bias=bias,
        pos_embedding="rope",
        rope_theta=float(theta),
        rope_scaling=rope if kind != "default" else None,
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        mlp="swiglu",
        n_kv_head=hf.get("num_key_value_heads") or nh,
        sliding_window=hf.get("sliding_window") if hf.get("model_type") == "mistral" else None,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    """The folder's safetensors weights (one file or an index of shards) as float32,
    under npllm's names (a missing `transformer.` prefix added, mask buffers dropped)."""
    from safetensors.numpy import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(_read_json(index).get("weight_map", {}).values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif any((folder / n).is_file() for n in ("pytorch_model.bin", "model.bin")):
        raise DataError(
            f"{folder} holds its weights as a PyTorch pickle, which npllm does not load; "
            "save the model again with save_pretrained(folder) (safetensors by default)"
        )
    else:
        raise DataError(f"{folder} has no model.safetensors; pass a save_pretrained folder")
    out: dict[str, np.ndarray] = {}
    for name in files:
        try:
            arrays = load_file(str(folder / name))
        except Exception as e:  # safetensors raises its own errors for bad files and dtypes
            raise DataError(f"cannot read {folder / name}: {e}") from None
        for k, v in arrays.items():
            if k.endswith(IGNORED_BUFFERS):
                continue
            if not k.startswith(("transformer.", "lm_head.", "model.")):
                k = "transformer." + k
            out[k] = np.asarray(v, np.float32)
    return out


def read_tokenizer(folder: Path):
    """(npllm tokenizer, hf_ids): see `from_hf_tokenizer_json`."""
    if (folder / "tokenizer.json").is_file():
        return from_hf_tokenizer_json(_read_json(folder / "tokenizer.json"))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = _read_json(folder / "vocab.json")
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [ln for ln in lines if ln and not ln.startswith("#version")]
        byte_chars = set(bytes_to_unicode().values())
        built = {a + b for a, b in (m.split(" ") for m in merges)}
        added = [
            {"id": i, "content": s}
            for s, i in vocab.items()
            if s not in built and s not in byte_chars
        ]
        d = {
            "model": {"type": "BPE", "vocab": vocab, "merges": merges},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
            "added_tokens": added,
        }
        return from_hf_tokenizer_json(d)
    raise DataError(f"{folder} has no tokenizer.json (or vocab.json and merges.txt)")


def reorder_rows(w: np.ndarray, hf_ids: list[int]) -> np.ndarray:
    """Rows of a (V, C) HF-ordered matrix in npllm's id order; rows past the tokenizer's
    vocabulary (padding) follow in their own order."""
    rest = sorted(set(range(w.shape[0])) - set(hf_ids))
    return np.ascontiguousarray(w[np.array(list(hf_ids) + rest)])


def import_hf(folder: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the run folder `out` from the Hugging Face folder `folder` (with `overwrite`,
    the run already there is cleared once the import has been read and checked)."""
    import dataclasses

    from npllm.runs import clear_run

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass a folder written by save_pretrained")
    config = gpt_config(_read_json(folder / "config.json"))
    tokenizer, hf_ids = read_tokenizer(folder)
    if len(hf_ids) > config.vocab_size:
        raise DataError(
            f"the tokenizer has {len(hf_ids)} tokens but the model only {config.vocab_size}"
        )
    weights = read_weights(folder)
    n = arch.naming(config)
    rope = config.pos_embedding == "rope"
    conv1d = set() if rope else set(arch.linear_names(config))
    state: dict[str, np.ndarray] = {}
    expected = _llama_shapes(config) if rope else _expected_shapes(config)
    for name, shape in expected.items():
        w = weights.get(name)
        if w is None and name == "lm_head.weight":
            continue
        if w is None:
            raise CheckpointError(f"the weights in {folder} lack {name}; the folder is incomplete")
        if name in conv1d:
            w = np.ascontiguousarray(w.T)
        if w.shape != shape:
            raise CheckpointError(
                f"{name} has shape {w.shape} in {folder}, but config.json implies {shape}"
            )
        state[name] = w
    for name in (n.top("embed"), "lm_head.weight"):
        if name in state:
            state[name] = reorder_rows(state[name], hf_ids)
    if config.tie_embeddings:
        state["lm_head.weight"] = state[n.top("embed")]
    elif "lm_head.weight" not in state:
        raise CheckpointError(f"the weights in {folder} lack lm_head.weight (untied)")
    info = {
        "iter": 0,
        "model_config": dataclasses.asdict(config),
        "tokenizer": tokenizer.to_dict(),
        "imported_from": str(folder.resolve()),
    }
    if overwrite:
        clear_run(Path(out))
    save_checkpoint(out, "best", state, {}, info)
    return Path(out)


def _llama_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Llama-family model and its shape (nn.Linear: (out, in))."""
    n, C, H, V = arch.naming(config), config.n_embd, config.hidden, config.vocab_size
    hs = C // config.n_head
    kv = (config.n_kv_head or config.n_head) * hs
    shapes = {n.top("embed"): (V, C), f"{n.root}.{n.norm_f}.weight": (C,)}
    for i in range(config.n_layer):
        b = n.block(i)
        shapes[f"{b}.{n.norm_1}.weight"] = shapes[f"{b}.{n.norm_2}.weight"] = (C,)
        q, k, v = (f"{b}.{n.attn}.{p}" for p in n.qkv)
        linears = {q: (C, C), k: (kv, C), v: (kv, C), f"{b}.{n.attn}.{n.attn_out}": (C, C)}
        m = f"{b}.{n.mlp}"
        linears.update({f"{m}.{n.gate}": (H, C), f"{m}.{n.up}": (H, C), f"{m}.{n.down}": (C, H)})
        for prefix, shape in linears.items():
            shapes[f"{prefix}.weight"] = shape
            if config.bias:
                shapes[f"{prefix}.bias"] = (shape[0],)
    shapes["lm_head.weight"] = (V, C)
    return shapes


def _expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the GPT-2 model and its shape in npllm's layout."""
    n, C, H, V = arch.naming(config), config.n_embd, config.hidden, config.vocab_size
    shapes = {n.top("embed"): (V, C), n.top("pos"): (config.block_size, C)}
    for i in range(config.n_layer):
        b = n.block(i)
        parts = {
            f"{n.norm_1}": C,
            f"{n.attn}.{n.qkv[0]}": (3 * C, C),
            f"{n.attn}.{n.attn_out}": (C, C),
            f"{n.norm_2}": C,
            f"{n.mlp}.{n.up}": (H, C),
            f"{n.mlp}.{n.down}": (C, H),
        }
        for part, shape in parts.items():
            w = shape if isinstance(shape, tuple) else (shape,)
            shapes[f"{b}.{part}.weight"] = w
            shapes[f"{b}.{part}.bias"] = (w[0],)
    shapes[f"{n.root}.{n.norm_f}.weight"] = shapes[f"{n.root}.{n.norm_f}.bias"] = (C,)
    shapes["lm_head.weight"] = (V, C)
    return shapes
