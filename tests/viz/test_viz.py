"""`npllm.viz` and `npllm viz`: every picture is produced as a file and its content
checked: the DOT text and the rendered SVG of a graph (names, shapes, gradient norms),
the attention probabilities against an independent NumPy computation and the grid drawn
from them, the benchmark ratios read from RESULTS.md and drawn, the loss curves."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from matplotlib.image import imread

import npllm.functional as F
from npllm import Tensor, cli, viz
from npllm.gpt import GPT, GPTConfig

from ..cli.conftest import TINY, corpus_file, data_dir  # noqa: F401  (fixtures)

PNG = b"\x89PNG\r\n\x1a\n"


def fails_with(argv, capsys, text):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err, err


# ---- the autograd graph ----------------------------------------------------------------
@pytest.fixture
def expression():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = Tensor(rng.standard_normal(4), requires_grad=True)
    mask = Tensor(np.ones((2, 4)))  # a constant: no gradient
    loss = ((x @ w + b).tanh() * mask).sum()
    loss.backward(retain_grads=True)
    return loss, dict(x=x, w=w, b=b, mask=mask)


def test_draw_dot_names_every_op_shape_and_gradient_norm(expression):
    loss, named = expression
    dot = viz.draw_dot(loss, names={**named, "loss": loss})
    src = dot.source
    ops = re.findall(r"label=(\w+) [^\n]*shape=oval", src)
    assert sorted(ops) == ["Add", "MatMul", "Mul", "Sum", "Tanh"]
    for name in ("x", "w", "b"):
        t = named[name]
        norm = f"grad norm {np.linalg.norm(t.grad):.4g}"
        shape = f"{t.shape} float64"
        assert f"{{{name} | {shape} | {norm}}}" in src, (name, src)
    assert "{loss | () float64 | grad norm 1}" in src
    assert "{mask | (2, 4) float64}" in src and "grey50" in src  # the constant, greyed
    # an edge from each op to its output, and one from each input to its op
    assert src.count("->") == 5 + (2 + 2 + 1 + 2 + 1)


def test_render_writes_dot_svg_and_png(expression, tmp_path):
    loss, named = expression
    dot = viz.draw_dot(loss, names=named)
    assert viz.render(dot, tmp_path / "g.dot").read_text() == dot.source
    svg = viz.render(dot, tmp_path / "g.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert {"MatMul", "Tanh", "x", "w", "b"} <= set(texts)
    assert f"grad norm {np.linalg.norm(named['w'].grad):.4g}" in texts
    png = viz.render(dot, tmp_path / "g.png")
    assert png.read_bytes()[:8] == PNG and imread(png).shape[0] > 50


def test_render_refuses_an_unknown_format(expression, tmp_path):
    from npllm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\.svg, \.png or \.dot"):
        viz.render(viz.draw_dot(expression[0]), tmp_path / "g.jpg")


def test_viz_graph_command_draws_a_gpt_loss(tmp_path, capsys):
    out = tmp_path / "gpt.svg"
    assert cli.main(["viz", "graph", "--out", str(out)]) == 0
    texts = set(re.findall(r"<text[^>]*>([^<]*)</text>", out.read_text()))
    assert {"LayerNorm", "QKVAttention", "CrossEntropy", "Embedding", "GELU", "Linear"} <= texts
    assert {"transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "loss"} <= texts
    assert sum(t.startswith("grad norm ") for t in texts) > 20
    fails_with(["viz", "graph", "--tokens", "99", "--out", str(out)], capsys, "--tokens")


# ---- attention maps --------------------------------------------------------------------
def test_attention_maps_match_an_independent_computation():
    cfg = GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=8)
    model = GPT(cfg)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    maps = viz.attention_maps(model, ids)
    T, hs = len(ids), cfg.n_embd // cfg.n_head
    assert len(maps) == 2 and all(m.shape == (2, T, T) for m in maps)
    for m in maps:
        np.testing.assert_allclose(m.sum(axis=-1), 1.0, rtol=1e-5)
        assert np.all(np.triu(m, k=1) == 0)  # causal
    # layer 0 by hand: embeddings, ln_1, c_attn, scaled scores, causal softmax
    sd = model.state_dict()
    x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:T]
    h = F.layer_norm(
        Tensor(x),
        Tensor(sd["transformer.h.0.ln_1.weight"]),
        Tensor(sd["transformer.h.0.ln_1.bias"]),
    ).data
    qkv = h @ sd["transformer.h.0.attn.c_attn.weight"].T + sd["transformer.h.0.attn.c_attn.bias"]
    q = qkv[:, :8].reshape(T, 2, hs).transpose(1, 0, 2)
    k = qkv[:, 8:16].reshape(T, 2, hs).transpose(1, 0, 2)
    s = q @ k.transpose(0, 2, 1) / math.sqrt(hs) + np.triu(np.full((T, T), -np.inf), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(maps[0], p / p.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_attention_maps_of_a_sliding_window_llama():
    cfg = GPTConfig(
        vocab_size=13, block_size=12, n_layer=1, n_head=2, n_embd=8, pos_embedding="rope",
        norm="rmsnorm", mlp="swiglu", n_kv_head=1, sliding_window=3, bias=False,
    )  # fmt: skip
    (att,) = viz.attention_maps(GPT(cfg), list(range(10)))
    i, j = np.indices((10, 10))
    assert np.all(att[:, (j > i) | (j <= i - 3)] == 0)  # the window's last 3 positions only
    assert np.all(att[:, (j <= i) & (j > i - 3)] > 0)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-5)


def test_draw_attention_writes_the_grid(tmp_path):
    maps = [np.tril(np.ones((3, 4, 4))) / np.arange(1, 5)[:, None] for _ in range(2)]
    out = viz.draw_attention(maps, ["a", " ", "\n", "b"], tmp_path / "att.svg", title="t")
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", out.read_text())
    titles = [t for t in texts if t.startswith("layer ")]
    assert titles == [f"layer {layer} head {head}" for layer in range(2) for head in range(3)]
    assert {"a", "·", "\\n", "b"} <= set(texts)  # the tokens label the axes, escaped
    png = viz.draw_attention(maps, list("abcd"), tmp_path / "att.png")
    assert png.read_bytes()[:8] == PNG and imread(png).ndim == 3


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("viz") / "run"
    argv = ["train", "--data", str(data_dir), "--out", str(run), *TINY, "--max-iters", "10"]
    assert cli.main(argv) == 0
    return run


def test_viz_attention_command_on_a_run(run_dir, tmp_path, capsys):
    assert cli.main(["viz", "attention", str(run_dir), "--prompt", "to be or not"]) == 0
    png = run_dir / "attention.png"
    assert png.read_bytes()[:8] == PNG
    out = tmp_path / "a.svg"
    long = "to be or not " * 3  # 39 characters, over the context of 16: cut, with a note
    assert cli.main(["viz", "attention", str(run_dir), "--prompt", long, "--out", str(out)]) == 0
    assert "cut to the last 16" in capsys.readouterr().err
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", out.read_text())
    assert "layer 0 head 1" in texts and "layer 1 head 0" not in texts  # TINY: 1 layer, 2 heads
    fails_with(["viz", "attention", str(run_dir), "--prompt", ""], capsys, "--prompt is empty")
    fails_with(
        ["viz", "attention", str(run_dir), "--prompt", "to", "--quantized"], capsys, "quantize"
    )
    assert cli.main(["quantize", str(run_dir)]) == 0
    out = tmp_path / "q.png"
    argv = ["viz", "attention", str(run_dir), "--prompt", "to be", "--quantized", "--out", str(out)]
    assert cli.main(argv) == 0 and out.read_bytes()[:8] == PNG
    fails_with(["viz", "attention", str(tmp_path), "--prompt", "to"], capsys, "checkpoint")


# ---- kernel benchmark and loss curves ---------------------------------------------------
RESULTS = """# Benchmark results

## Kernels

### cpu-small: B=12 T=64

| kernel | fwd+bwd Numba ms | NumPy ms | torch ms | Numba/torch | NumPy/torch |
|---|---|---|---|---|---|
| softmax (target) | 0.107 | 0.864 | 0.111 | 0.96 | 7.82 |

| kernel | pass | Numba ms | NumPy ms | torch ms | Numba/torch | NumPy/torch |
|---|---|---|---|---|---|---|
| softmax | fwd | 0.086 (0.085-0.088) | 0.620 | 0.072 | 1.20 (1.16-1.25) | 8.63 (8.29-8.75) |
| linear (mlp.c_fc) | bwd | 0.869 | 0.877 | 0.881 | 0.99 (0.97-0.99) | 1.00 (0.98-1.01) |

| matmul | pass | BLAS GFLOP/s | Numba side GFLOP/s | torch GFLOP/s | Numba side / torch |
|---|---|---|---|---|---|
| lm_head | fwd | 196 | 185 | 206 | 0.90 |

### guppy: B=8

| kernel | pass | Numba ms | NumPy ms | torch ms | Numba/torch | NumPy/torch |
|---|---|---|---|---|---|---|
| adamw (8.73M params) | step | 1 | 2 | 3 | 0.13 (0.1-0.2) | 2.04 |

## Generation

| kernel | pass | x | y | z | Numba/torch | NumPy/torch |
| ignored | fwd | 1 | 2 | 3 | 9.0 | 9.0 |
"""


def test_kernel_ratios_reads_the_per_pass_tables(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(RESULTS)
    assert viz.kernel_ratios(path) == {
        "cpu-small": [("softmax fwd", 1.20, 8.63), ("linear (mlp.c_fc) bwd", 0.99, 1.00)],
        "guppy": [("adamw (8.73M params) step", 0.13, 2.04)],
    }


def test_kernel_ratios_of_the_repository_results():
    ratios = viz.kernel_ratios(cli_results())
    assert {"cpu-small", "guppy"} <= set(ratios)
    names = [name for name, *_ in ratios["cpu-small"]]
    for kernel in ("softmax", "layernorm", "gelu", "cross_entropy", "attention"):
        assert f"{kernel} fwd" in names and f"{kernel} bwd" in names
    assert all(r > 0 for rows in ratios.values() for _, *rs in rows for r in rs)


def cli_results():
    from npllm.commands.viz import RESULTS as path

    return path


def test_viz_kernels_command_draws_the_ratios(tmp_path, capsys):
    path = tmp_path / "RESULTS.md"
    path.write_text(RESULTS)
    out = tmp_path / "k.svg"
    assert cli.main(["viz", "kernels", "--results", str(path), "--out", str(out)]) == 0
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", out.read_text())
    assert {"cpu-small", "guppy", "softmax fwd", "adamw (8.73M params) step"} <= set(texts)
    assert {"1.20", "0.99", "0.13"} <= set(texts)  # each Numba bar is annotated
    png = tmp_path / "k.png"
    assert cli.main(["viz", "kernels", "--out", str(png)]) == 0  # the repository's RESULTS.md
    assert png.read_bytes()[:8] == PNG
    fails_with(["viz", "kernels", "--results", str(tmp_path / "no.md")], capsys, "--results")
    (tmp_path / "empty.md").write_text("# nothing\n")
    fails_with(["viz", "kernels", "--results", str(tmp_path / "empty.md")], capsys, "Kernels")


def test_viz_loss_draws_both_curves(run_dir, tmp_path, capsys):
    out = tmp_path / "loss.svg"
    assert cli.main(["viz", "loss", str(run_dir), "--out", str(out)]) == 0
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", out.read_text())
    assert {"train (batch)", "train (eval)", "val (eval)", "iteration"} <= set(texts)
    fails_with(["viz", "loss", str(tmp_path)], capsys, "no metrics.jsonl")
