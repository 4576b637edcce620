"""The model description: what a `GPTConfig`'s model is made of and where each parameter
lives in the state dict, in one place that everything running or converting a model reads.

- Names: `naming(config)` gives the state-dict name of every role (token embedding,
  position embedding, the blocks' norms, projections and MLP, the final norm, the head).
  The GPT-2 family (learned positions) keeps nanoGPT's names, the RoPE family follows
  transformers' Llama (`model.layers.{i}.self_attn.q_proj.weight`). The module tree of
  training (`npllm.gpt`, `npllm.layers`) is built under these names, so its `state_dict()`
  carries them.
- Linears: `linear_names(config)` lists the block weights `npllm.quant` converts.
- Records: `inference_weights(config, weights)` gathers from a weights dict (float32 arrays,
  `npllm.quant.Int8Weight`s or `Int4Weight`s by name) one `BlockWeights` per block and a
  `HeadWeights`: the arrays the KV-cache decoder (`npllm.generate`) and the fused decode step
  (`npllm.kernels.decode`) read. Projections that read the same input are fused into one
  matrix there (q, k, v; a SwiGLU's gate and up), so a decode step reads them in one pass;
  missing biases become zeros and float32 weights get scales of one, so the int8 and the
  float32 model run the same code (Numba takes these NamedTuples of arrays as they are).
- `Spec`: the static numbers a decode step branches on (norm and activation kind, heads).

Adding a block variant means: its layer in `npllm/layers/`, its name here, its field in
`BlockWeights` if it has weights, and its branch in the decode step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from npllm.errors import ShapeError


@dataclass(frozen=True)
class Naming:
    """State-dict names: the model's top modules under `root`, and each block's children.
    A role a config does not use (no position embedding, no gate) is simply never built."""

    root: str  # the container of embeddings, blocks and final norm
    embed: str
    pos: str
    layers: str
    norm_f: str
    norm_1: str
    attn: str
    qkv: tuple[str, ...]  # one fused projection, or q, k and v
    attn_out: str
    norm_2: str
    mlp: str
    up: str
    gate: str
    down: str
    head: str = "lm_head"

    def top(self, part: str) -> str:
        """The full name of a top-level part's weight, e.g. 'transformer.wte.weight'."""
        return f"{self.root}.{getattr(self, part)}.weight"

    def block(self, i: int) -> str:
        return f"{self.root}.{self.layers}.{i}"


GPT2_NAMES = Naming(
    root="transformer",
    embed="wte",
    pos="wpe",
    layers="h",
    norm_f="ln_f",
    norm_1="ln_1",
    attn="attn",
    qkv=("c_attn",),
    attn_out="c_proj",
    norm_2="ln_2",
    mlp="mlp",
    up="c_fc",
    gate="c_gate",
    down="c_proj",
)
LLAMA_NAMES = Naming(
    root="model",
    embed="embed_tokens",
    pos="",
    layers="layers",
    norm_f="norm",
    norm_1="input_layernorm",
    attn="self_attn",
    qkv=("q_proj", "k_proj", "v_proj"),
    attn_out="o_proj",
    norm_2="post_attention_layernorm",
    mlp="mlp",
    up="up_proj",
    gate="gate_proj",
    down="down_proj",
)
NAMINGS = (GPT2_NAMES, LLAMA_NAMES)

# The kinds a decode step branches on (npllm.kernels.decode), as small ints for Numba.
NORMS = {"layernorm": 0, "rmsnorm": 1}
ACTIVATIONS = {"gelu": 0, "gelu_exact": 1, "relu": 2, "swiglu": 3}


def _get(config: Any, name: str, default: Any) -> Any:
    """A config field, or its default for configs saved before the field existed."""
    value = getattr(config, name, default)
    return default if value is None else value


def naming(config: Any) -> Naming:
    return LLAMA_NAMES if _get(config, "pos_embedding", "learned") == "rope" else GPT2_NAMES


def activation(config: Any) -> str:
    """The MLP's kind: "swiglu" or the activation of a plain MLP."""
    mlp = _get(config, "mlp", "gelu")
    return mlp if mlp == "swiglu" else _get(config, "activation", "gelu")


def block_linears(config: Any, i: int) -> list[str]:
    """Block i's Linear weights (full names), in the order the block uses them."""
    n = naming(config)
    p = f"{n.block(i)}.{n.attn}"
    names = [f"{p}.{q}.weight" for q in n.qkv] + [f"{p}.{n.attn_out}.weight"]
    m = f"{n.block(i)}.{n.mlp}"
    if activation(config) == "swiglu":
        names.append(f"{m}.{n.gate}.weight")
    return names + [f"{m}.{n.up}.weight", f"{m}.{n.down}.weight"]


def linear_names(config: Any) -> list[str]:
    return [name for i in range(config.n_layer) for name in block_linears(config, i)]


def is_block_linear(name: str) -> bool:
    """Whether `name` is a Linear weight of a block, under any family's names."""
    for n in NAMINGS:
        head = f"{n.root}.{n.layers}."
        if not name.startswith(head) or not name.endswith(".weight"):
            continue
        index, _, rest = name[len(head) : -len(".weight")].partition(".")
        projections = {f"{n.attn}.{q}" for q in (*n.qkv, n.attn_out)}
        projections |= {f"{n.mlp}.{q}" for q in (n.up, n.gate, n.down)}
        if index.isdigit() and rest in projections:
            return True
    return False


def is_embedding(name: str) -> bool:
    return name in {n.top("embed") for n in NAMINGS}


class Spec(NamedTuple):
    """What a decode step branches on: NORMS / ACTIVATIONS kinds, head counts, norm eps,
    whether q and k are rotated (RoPE), the attention window (0: none)."""

    norm: int
    act: int
    n_head: int
    n_kv_head: int
    eps: float
    rope: int
    window: int


def spec(config: Any) -> Spec:
    return Spec(
        NORMS[_get(config, "norm", "layernorm")],
        ACTIVATIONS[activation(config)],
        config.n_head,
        _get(config, "n_kv_head", config.n_head),
        float(_get(config, "norm_eps", 1e-5)),
        int(_get(config, "pos_embedding", "learned") == "rope"),
        int(_get(config, "sliding_window", 0)),
    )


class BlockWeights(NamedTuple):
    """One block's arrays for inference. Linears come as (w, s, b): w (out, in) float32 or
    int8, s (out,) its per-row scales (ones for float32), or for int4 w uint8 codes in
    tiles of 16 outputs (out / 16, in / 8, 64) and s (2, blocks, out) scales and offsets
    (symmetric: (1, blocks, out), scales only; `npllm.kernels.int4`'s layout); b (out,)
    (zeros for none). `s.shape[-1]` is the output count of all three. qkv: the q heads'
    rows, then k's, then v's; up: for SwiGLU the gate's rows, then up's."""

    norm_1_w: np.ndarray
    norm_1_b: np.ndarray
    qkv_w: np.ndarray
    qkv_s: np.ndarray
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_s: np.ndarray
    out_b: np.ndarray
    norm_2_w: np.ndarray
    norm_2_b: np.ndarray
    up_w: np.ndarray
    up_s: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_s: np.ndarray
    down_b: np.ndarray


class HeadWeights(NamedTuple):
    """The final norm and the lm_head (w, s, b as in `BlockWeights`)."""

    norm_w: np.ndarray
    norm_b: np.ndarray
    w: np.ndarray
    s: np.ndarray
    b: np.ndarray


@dataclass
class InferenceWeights:
    embed: Any  # (V, C) float32 array or Int8Weight
    pos: np.ndarray | None  # (block_size, C) learned positions, or None
    blocks: list[BlockWeights]
    head: HeadWeights
    head_weight: Any  # the lm_head's weight as given (the embedding's when tied)


def _linear(weights: dict[str, Any], names: list[str]) -> tuple[np.ndarray, ...]:
    """(w, s, b) of the Linears `names` (their '.weight' names) stacked by rows. int4
    weights give the int4 kernels' layout: codes (out / 16, in / 8, 64) and s (2, blocks, out),
    scales then offsets (symmetric: (1, blocks, out), scales only; `npllm.kernels.int4`)."""
    from npllm.kernels.int4 import kernel_layout
    from npllm.quant import Int4Weight, Int8Weight

    ws = [weights[n] for n in names]
    rows = [w.shape[0] for w in ws]
    kinds = {type(w) if isinstance(w, (Int4Weight, Int8Weight)) else np.ndarray for w in ws}
    groups = {w.group_size for w in ws if isinstance(w, Int4Weight)}
    if len(kinds) > 1 or len(groups) > 1:
        raise ShapeError(
            f"{', '.join(names)} mix weight formats (float32, int8, int4 groups); quantize "
            "all of them the same way"
        )
    if kinds == {Int8Weight}:
        w = _cat([q.q for q in ws])
        s = _cat([q.scale for q in ws])
    elif kinds == {Int4Weight}:
        w, s = kernel_layout(
            _cat([q.q for q in ws]), _cat([q.scale for q in ws]), _cat([q.offsets() for q in ws])
        )
    else:
        w = _cat([np.asarray(q, np.float32) for q in ws])
        s = np.ones(w.shape[0], np.float32)
    biases = [weights.get(n[: -len("weight")] + "bias") for n in names]
    if all(b is None for b in biases):
        b = np.zeros(s.shape[-1], np.float32)  # the output count, whatever the layout
    else:
        b = _cat([np.zeros(r, np.float32) if x is None else x for x, r in zip(biases, rows)])
    return w, s, b


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    """One array as is (shared with the model, not copied), several stacked by rows."""
    return np.ascontiguousarray(arrays[0]) if len(arrays) == 1 else np.concatenate(arrays)


def _norm(weights: dict[str, Any], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    w = weights[f"{prefix}.weight"]
    b = weights.get(f"{prefix}.bias")
    return w, np.zeros_like(w) if b is None else b


def inference_weights(config: Any, weights: dict[str, Any]) -> InferenceWeights:
    """Gather the records of `config`'s model from `weights` (name -> float32 array or
    Int8Weight, as `npllm.quant.load_weights` gives); the lm_head is the token embedding
    when the model ties them or the weights hold no `lm_head.weight`."""
    n = naming(config)
    required = [n.top("embed"), n.top("norm_f")] + ([n.top("pos")] if n.pos else [])
    missing = [name for name in required if name not in weights]
    if missing:
        raise ShapeError(
            f"the weights lack {', '.join(missing)}; pass the state dict of a model with "
            "this config"
        )
    blocks = []
    for i in range(config.n_layer):
        b = n.block(i)
        linears = block_linears(config, i)
        nq = len(n.qkv)
        try:
            blocks.append(
                BlockWeights(
                    *_norm(weights, f"{b}.{n.norm_1}"),
                    *_linear(weights, linears[:nq]),
                    *_linear(weights, linears[nq : nq + 1]),
                    *_norm(weights, f"{b}.{n.norm_2}"),
                    *_linear(weights, linears[nq + 1 : -1]),
                    *_linear(weights, linears[-1:]),
                )
            )
        except KeyError as e:
            raise ShapeError(
                f"the weights lack {e}; pass the state dict of a model with this config"
            ) from None
    embed = weights[n.top("embed")]
    tied = _get(config, "tie_embeddings", True) or "lm_head.weight" not in weights
    head_weight = embed if tied else weights["lm_head.weight"]
    head = HeadWeights(
        *_norm(weights, f"{n.root}.{n.norm_f}"), *_linear({"w.weight": head_weight}, ["w.weight"])
    )
    pos = weights[n.top("pos")] if n.pos else None
    return InferenceWeights(embed, pos, blocks, head, head_weight)
