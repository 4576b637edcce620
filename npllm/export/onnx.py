"""A run as an ONNX graph, `input_ids` (int64, batch x sequence) -> `logits` (float32,
batch x sequence x vocab), built node by node with the `onnx` package's helpers (no
PyTorch in the path), opset 17, both axes dynamic (sequence up to block_size).

The graph is the forward `npllm.gpt` computes. GPT-2 family: token + position
embeddings; per block LayerNormalization, the fused q/k/v projection split into heads,
scaled scores plus a causal mask (a block_size x block_size constant sliced to the
sequence), Softmax, the output projection, the residual; the MLP with GELU (tanh or erf,
written out in primitive ops) or ReLU; the final LayerNorm and the tied (or untied) head.
Llama family: RMSNorm in primitive ops, separate q/k/v projections, RoPE as transformers
rotates (the cos/sin tables npllm makes, any of its scalings, sliced to the sequence),
grouped-query attention by grouping the query heads under their key/value head (MatMul
broadcasts the shared keys), a sliding window in the mask, and the SwiGLU MLP.

With `int8=True` the weights `npllm quantize` converts (every block Linear, the token
embedding / head) are stored as npllm's int8 (`npllm.quant`: per-row symmetric, one
float32 scale per output row) and expanded by DequantizeLinear with a per-axis scale, so
the file holds a quarter of those bytes and computes exactly npllm's int8 model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from npllm import arch
from npllm.errors import ConfigError
from npllm.export import gpt2_family, require
from npllm.export.hf import gpt2_tensors
from npllm.io import write_bytes_atomic

OPSET = 17


class _Graph:
    """Nodes and initializers under generated names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        self._n += 1
        names = [f"{op.lower()}_{self._n}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names


def _weight(g: _Graph, name: str, tensors: dict[str, np.ndarray], q: dict[str, Any]) -> str:
    """A Linear weight as an (in, out) float input of MatMul: an initializer, or the int8
    initializer dequantized per output column."""
    if name in q:
        wq, scale = q[name]
        zero = np.zeros(scale.shape, np.int8)
        return g.op(
            "DequantizeLinear",
            g.const(name + ".q", wq.T),
            g.const(name + ".scale", scale),
            g.const(name + ".zero", zero),
            axis=1,
        )
    return g.const(name, tensors[name].T)


def _linear(g: _Graph, x: str, prefix: str, tensors, q) -> str:
    y = g.op("MatMul", x, _weight(g, f"{prefix}.weight", tensors, q))
    bias = tensors.get(f"{prefix}.bias")
    return y if bias is None else g.op("Add", y, g.const(f"{prefix}.bias", bias))


def _activation(g: _Graph, x: str, kind: str) -> str:
    def c(v: float) -> str:
        g._n += 1
        return g.const(f"c{g._n}", np.array(v, np.float32))

    if kind == "relu":
        return g.op("Relu", x)
    half_x = g.op("Mul", x, c(0.5))
    if kind == "gelu_exact":  # 0.5 x (1 + erf(x / sqrt 2))
        inner = g.op("Erf", g.op("Mul", x, c(1 / math.sqrt(2))))
    else:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = g.op("Mul", g.op("Mul", x, x), x)
        u = g.op("Add", x, g.op("Mul", x3, c(0.044715)))
        inner = g.op("Tanh", g.op("Mul", u, c(math.sqrt(2 / math.pi))))
    return g.op("Mul", half_x, g.op("Add", inner, c(1.0)))


def _rope(g: _Graph, x: str, cos: str, sin: str, halves: str) -> str:
    """transformers' rotate-half RoPE on x (B, h, T, hs): [x1 cos - x2 sin, x2 cos + x1 sin]."""
    x1, x2 = g.op("Split", x, halves, outputs=2, axis=-1)
    y1 = g.op("Sub", g.op("Mul", x1, cos), g.op("Mul", x2, sin))
    y2 = g.op("Add", g.op("Mul", x2, cos), g.op("Mul", x1, sin))
    return g.op("Concat", y1, y2, axis=-1)


def _check(config: Any) -> None:
    if config.pos_embedding != "rope":
        gpt2_family(config, "ONNX")
    elif config.norm != "rmsnorm" or arch.activation(config) != "swiglu":
        raise ConfigError(
            "cannot export this RoPE model to ONNX: only the GPT-2 family and Llama-shaped "
            "models (RMSNorm, SwiGLU) are exported"
        )


def build_onnx(config: Any, state: dict[str, np.ndarray], int8: bool = False):
    """The onnx ModelProto of the model (see the module docstring)."""
    from npllm.layers.rope import config_rope, rope_tables
    from npllm.quant import is_quantized_name, quantize

    _check(config)
    onnx = require("onnx", "ONNX")
    TensorProto, helper = onnx.TensorProto, onnx.helper
    rope = config.pos_embedding == "rope"
    if rope:
        drop = "lm_head.weight" if config.tie_embeddings else None
        tensors = {k: np.asarray(v, np.float32) for k, v in state.items() if k != drop}
    else:
        tensors = gpt2_tensors(config, state)
    q = {k: quantize(v) for k, v in tensors.items() if int8 and is_quantized_name(k)}
    n = arch.naming(config)
    C, nh, B = config.n_embd, config.n_head, config.block_size
    hs = C // nh
    nkv = config.n_kv_head or nh
    g = _Graph()
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731

    T = g.op("Shape", "input_ids", start=1, end=2)  # (1,): the sequence length
    start, rows = g.const("start", i64(0)), g.const("rows", i64(0))
    embed = n.top("embed")
    if embed in q:  # one dequantized (V, C) table serves the lookup and the tied head
        wte = g.op(
            "DequantizeLinear",
            g.const(embed + ".q", q[embed][0]),
            g.const(embed + ".scale", q[embed][1]),
            g.const(embed + ".zero", np.zeros(config.vocab_size, np.int8)),
            axis=0,
        )
    else:
        wte = g.const(embed, tensors[embed])
    x = g.op("Gather", wte, "input_ids")  # (B, T, C)
    if rope:  # (T, hs/2) tables of positions 0..T-1, as npllm.layers.rope makes them
        freqs, attention = config_rope(config)
        tables = rope_tables(np.arange(B), freqs, attention)
        cos, sin = (
            g.op("Slice", g.const(name, t.astype(np.float32)), start, T, rows)
            for name, t in zip(("rope_cos", "rope_sin"), tables)
        )
    else:
        wpe = g.const(n.top("pos"), tensors[n.top("pos")])
        x = g.op("Add", x, g.op("Slice", wpe, start, T, rows))  # + positions 0..T-1
    i, j = np.arange(B)[:, None], np.arange(B)[None, :]
    hidden = j > i
    if config.sliding_window:  # the last `window` positions only
        hidden |= j <= i - config.sliding_window
    mask = g.op(
        "Slice", g.const("mask", np.where(hidden, -np.inf, 0).astype(np.float32)), start, T, rows
    )
    mask = g.op("Slice", mask, start, T, g.const("cols", i64(1)))  # (T, T)
    scale = g.const("scale", np.array(1 / math.sqrt(hs), np.float32))
    grouped = g.const("grouped", i64(0, nkv, nh // nkv, -1, hs))  # q heads by kv head
    ungrouped = g.const("ungrouped", i64(0, nh, -1, hs))
    merged = g.const("merged", i64(0, 0, C))
    axis2 = g.const("axis2", i64(2))

    def norm(x: str, prefix: str) -> str:
        w = g.const(f"{prefix}.weight", tensors[f"{prefix}.weight"])
        if config.norm == "rmsnorm":  # x / sqrt(mean(x^2) + eps) * w
            ms = g.op("ReduceMean", g.op("Mul", x, x), axes=[-1], keepdims=1)
            eps = g.const(f"{prefix}.eps", np.array(config.norm_eps, np.float32))
            return g.op("Mul", g.op("Div", x, g.op("Sqrt", g.op("Add", ms, eps))), w)
        b = g.const(f"{prefix}.bias", tensors[f"{prefix}.bias"])
        return g.op("LayerNormalization", x, w, b, axis=-1, epsilon=config.norm_eps)

    shapes = {h: g.const(f"heads{h}", i64(0, 0, h, hs)) for h in {nh, nkv}}
    halves = g.const("halves", i64(hs // 2, hs // 2))

    def heads(x: str, h: int) -> str:  # (B, T, h * hs) -> (B, h, T, hs)
        return g.op("Transpose", g.op("Reshape", x, shapes[h]), perm=[0, 2, 1, 3])

    for layer in range(config.n_layer):
        b = n.block(layer)
        a = f"{b}.{n.attn}"
        h = norm(x, f"{b}.{n.norm_1}")
        if len(n.qkv) == 1:  # GPT-2: one fused projection, split
            qkv = _linear(g, h, f"{a}.{n.qkv[0]}", tensors, q)  # (B, T, 3C)
            sizes = g.const(f"split{layer}", i64(C, C, C))
            qh, kh, vh = g.op("Split", qkv, sizes, outputs=3, axis=-1)
        else:
            qh, kh, vh = (_linear(g, h, f"{a}.{p}", tensors, q) for p in n.qkv)
        qh, kh, vh = heads(qh, nh), heads(kh, nkv), heads(vh, nkv)
        if rope:
            qh, kh = _rope(g, qh, cos, sin, halves), _rope(g, kh, cos, sin, halves)
        qg = g.op("Reshape", qh, grouped)  # (B, nkv, nh/nkv, T, hs)
        kt = g.op("Unsqueeze", g.op("Transpose", kh, perm=[0, 1, 3, 2]), axis2)  # (B,nkv,1,hs,T)
        vg = g.op("Unsqueeze", vh, axis2)  # (B, nkv, 1, T, hs)
        att = g.op("Add", g.op("Mul", g.op("MatMul", qg, kt), scale), mask)  # (.., T, T)
        y = g.op("MatMul", g.op("Softmax", att, axis=-1), vg)  # (B, nkv, nh/nkv, T, hs)
        y = g.op("Transpose", g.op("Reshape", y, ungrouped), perm=[0, 2, 1, 3])  # (B,T,nh,hs)
        x = g.op("Add", x, _linear(g, g.op("Reshape", y, merged), f"{a}.{n.attn_out}", tensors, q))
        h = norm(x, f"{b}.{n.norm_2}")
        m = f"{b}.{n.mlp}"
        up = _linear(g, h, f"{m}.{n.up}", tensors, q)
        if rope:  # SwiGLU: silu(gate) * up
            gate = _linear(g, h, f"{m}.{n.gate}", tensors, q)
            inner = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)
        else:
            inner = _activation(g, up, arch.activation(config))
        x = g.op("Add", x, _linear(g, inner, f"{m}.{n.down}", tensors, q))
    x = norm(x, f"{n.root}.{n.norm_f}")
    if config.tie_embeddings:
        head = g.op("Transpose", wte, perm=[1, 0])  # (C, V)
    else:
        head = _weight(g, "lm_head.weight", tensors, q)
    g.op("MatMul", x, head)  # the logits: its output is renamed below
    g.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        g.nodes,
        "npllm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", "sequence", config.vocab_size]
            )
        ],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="npllm"
    )
    model.ir_version = 8  # what opset 17 needs; readable by every current ONNX Runtime
    return model


def write_onnx(
    config: Any, state: dict[str, np.ndarray], out: str | os.PathLike, int8: bool = False
) -> Path:
    """Write the ONNX file `out` (checked by onnx.checker first); returns its path."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; pass the path of the .onnx file to write")
    model = build_onnx(config, state, int8)
    require("onnx", "ONNX").checker.check_model(model)
    write_bytes_atomic(out, model.SerializeToString())
    return out
