"""A run as an ONNX graph, `input_ids` (int64, batch x sequence) -> `logits` (float32,
batch x sequence x vocab), built node by node with the `onnx` package's helpers (no
PyTorch in the path), opset 17, both axes dynamic (sequence up to block_size).

The graph is the GPT-2 forward as `npllm.gpt` computes it: token + position embeddings;
per block LayerNormalization, the fused q/k/v projection split into heads, scaled scores
plus a causal mask (a block_size x block_size constant sliced to the sequence), Softmax,
the output projection, the residual; the MLP with GELU (tanh or erf, written out in
primitive ops) or ReLU; the final LayerNorm and the tied (or untied) head.

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
    return g.op("Add", y, g.const(f"{prefix}.bias", tensors[f"{prefix}.bias"]))


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


def build_onnx(config: Any, state: dict[str, np.ndarray], int8: bool = False):
    """The onnx ModelProto of the model (see the module docstring)."""
    from npllm.quant import is_quantized_name, quantize

    gpt2_family(config, "ONNX")
    onnx = require("onnx", "ONNX")
    TensorProto, helper = onnx.TensorProto, onnx.helper
    tensors = gpt2_tensors(config, state)
    q = {k: quantize(v) for k, v in tensors.items() if int8 and is_quantized_name(k)}
    n = arch.naming(config)
    C, nh = config.n_embd, config.n_head
    hs = C // nh
    g = _Graph()
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731

    T = g.op("Shape", "input_ids", start=1, end=2)  # (1,): the sequence length
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
    start = g.const("start", i64(0))
    rows = g.const("rows", i64(0))
    wpe = g.const(n.top("pos"), tensors[n.top("pos")])
    x = g.op("Add", x, g.op("Slice", wpe, start, T, rows))  # + positions 0..T-1
    causal = np.triu(np.full((config.block_size,) * 2, -np.inf, np.float32), 1)
    mask = g.op("Slice", g.const("causal", causal), start, T, rows)
    mask = g.op("Slice", mask, start, T, g.const("cols", i64(1)))  # (T, T)
    heads = g.const("heads", i64(0, 0, nh, hs))
    merged = g.const("merged", i64(0, 0, C))
    scale = g.const("scale", np.array(1 / math.sqrt(hs), np.float32))
    act = arch.activation(config)

    def norm(x: str, prefix: str) -> str:
        w, b = (g.const(f"{prefix}.{k}", tensors[f"{prefix}.{k}"]) for k in ("weight", "bias"))
        return g.op("LayerNormalization", x, w, b, axis=-1, epsilon=config.norm_eps)

    for i in range(config.n_layer):
        b = n.block(i)
        h = norm(x, f"{b}.{n.norm_1}")
        qkv = _linear(g, h, f"{b}.{n.attn}.{n.qkv[0]}", tensors, q)  # (B, T, 3C)
        parts = g.op("Split", qkv, g.const(f"split{i}", i64(C, C, C)), outputs=3, axis=-1)
        qh, kh, vh = (g.op("Reshape", p, heads) for p in parts)  # (B, T, nh, hs)
        qh = g.op("Transpose", qh, perm=[0, 2, 1, 3])  # (B, nh, T, hs)
        kt = g.op("Transpose", kh, perm=[0, 2, 3, 1])  # (B, nh, hs, T)
        vh = g.op("Transpose", vh, perm=[0, 2, 1, 3])  # (B, nh, T, hs)
        att = g.op("Add", g.op("Mul", g.op("MatMul", qh, kt), scale), mask)  # (B, nh, T, T)
        y = g.op("MatMul", g.op("Softmax", att, axis=-1), vh)  # (B, nh, T, hs)
        y = g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]), merged)  # (B, T, C)
        x = g.op("Add", x, _linear(g, y, f"{b}.{n.attn}.{n.attn_out}", tensors, q))
        h = _linear(g, norm(x, f"{b}.{n.norm_2}"), f"{b}.{n.mlp}.{n.up}", tensors, q)
        x = g.op("Add", x, _linear(g, _activation(g, h, act), f"{b}.{n.mlp}.{n.down}", tensors, q))
    x = norm(x, f"{n.root}.{n.norm_f}")
    if config.tie_embeddings:
        head = g.op("Transpose", wte, perm=[1, 0])  # (C, V)
    else:
        head = _weight(g, "lm_head.weight", tensors, q)
    g.op("MatMul", x, head)  # the logits: its output is renamed below
    g.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        g.nodes,
        "npllm-gpt2",
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
    from npllm.errors import ConfigError

    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; pass the path of the .onnx file to write")
    model = build_onnx(config, state, int8)
    require("onnx", "ONNX").checker.check_model(model)
    write_bytes_atomic(out, model.SerializeToString())
    return out
