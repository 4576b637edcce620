"""Pictures, for where people would rather look than read (the optional `viz` extra:
matplotlib, graphviz and graphviz-pure). `npllm viz ...` draws each of them from the
command line (`npllm/commands/viz.py`).

- `draw_dot(root)`: the autograd graph of any expression, as micrograd's `draw_dot`: a
  box per tensor with its shape, dtype and gradient norm, an oval per op, arrows from
  inputs to outputs. It returns a `graphviz.Digraph` (DOT source); `render(dot, path)`
  writes it as DOT text, SVG or PNG. The rendering runs `graphviz-pure` (the Graphviz
  layout engine as a PyPI wheel, so no system package is needed) or, failing that, a
  system `dot`.
- `attention_maps(model, ids)` and `draw_attention(...)`: each layer's attention
  probabilities for a prompt, drawn as a grid of layers x heads.
- `kernel_ratios(results)` and `draw_kernel_ratios(...)`: the per-pass kernel timings of
  `benchmarks/RESULTS.md` ("Kernels") as bars of the ratio to PyTorch.
- `loss_curve(run)`: a run's training and validation losses from its `metrics.jsonl`.

Every picture is written atomically; a `.svg` path gives an SVG whose text stays text.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from npllm.autograd.engine import Tensor
from npllm.errors import ConfigError, DataError
from npllm.io import write_bytes_atomic

_EXTRA = "pip install 'npllm[viz]'"


# ---- the autograd graph ----------------------------------------------------------------
def _tensors(root: Tensor) -> list[Tensor]:
    """Every tensor reachable from `root` through recorded ops, constants included (the
    engine's own walk visits only tensors that require a gradient)."""
    seen: dict[int, Tensor] = {id(root): root}
    stack = [root]
    while stack:
        t = stack.pop()
        for parent in t._node[2] if t._node is not None else ():
            if parent is not None and id(parent) not in seen:  # None: an omitted input
                seen[id(parent)] = parent
                stack.append(parent)
    return list(seen.values())


def draw_dot(root: Tensor, names: Mapping[str, Tensor] | None = None, rankdir: str = "LR") -> Any:
    """The graph that produced `root`, as a `graphviz.Digraph`. Each tensor is a box:
    its name (from `names`, e.g. `dict(model.named_parameters())`, else "loss" for the
    root), its shape and dtype, and the norm of its gradient when it has one (call
    `root.backward(retain_grads=True)` first to see them on every tensor). Tensors that
    need no gradient (inputs, constants) are grey; each op is an oval named after its
    `Function` class (Add, MatMul, LayerNorm, ...)."""
    try:
        import graphviz
    except ImportError:
        raise ConfigError(f"drawing graphs needs the graphviz package: {_EXTRA}") from None
    label_of = {id(t): name for name, t in (names or {}).items()}
    label_of.setdefault(id(root), "output")
    dot = graphviz.Digraph(graph_attr={"rankdir": rankdir}, node_attr={"fontsize": "11"})
    for t in _tensors(root):
        parts = [label_of.get(id(t), ""), f"{tuple(t.shape)} {t.dtype}"]
        if t.grad is not None:
            parts.append(f"grad norm {float(np.linalg.norm(t.grad)):.4g}")
        elif t.requires_grad:
            parts.append("grad -")
        label = "{" + " | ".join(_escape(p) for p in parts if p) + "}"
        style = {} if t.requires_grad else {"color": "grey50", "fontcolor": "grey40"}
        dot.node(f"t{id(t)}", label, shape="record", **style)
        if t._node is not None:
            fn, _, parents = t._node
            op = f"op{id(t)}"
            dot.node(op, fn.__name__, shape="oval", style="filled", fillcolor="lightblue")
            dot.edge(op, f"t{id(t)}")
            for parent in parents:
                if parent is not None:
                    dot.edge(f"t{id(parent)}", op)
    return dot


def _escape(text: str) -> str:
    """A record field's text: DOT record labels treat these characters as syntax."""
    return re.sub(r"([{}|<>\\])", r"\\\1", text)


def _renderer() -> str:
    beside = Path(sys.executable).parent / "graphviz-pure"  # a venv's, when not on PATH
    for exe in (
        shutil.which("graphviz-pure"),
        str(beside) if beside.exists() else None,
        shutil.which("dot"),
    ):
        if exe:
            return exe
    raise ConfigError(f"rendering a graph needs graphviz-pure (or Graphviz's dot): {_EXTRA}")


def render(dot: Any, out: str | os.PathLike) -> Path:
    """Write `dot` (a `graphviz.Digraph`) to `out`: DOT source for .dot/.gv, else the
    format its suffix names (.svg, .png)."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt in ("dot", "gv"):
        data = dot.source.encode()
    elif fmt in ("svg", "png"):
        done = subprocess.run(
            [_renderer(), f"-T{fmt}"], input=dot.source.encode(), capture_output=True
        )
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise DataError(f"the graph renderer failed: {err[-1] if err else done.returncode}")
        data = done.stdout
    else:
        raise ConfigError(f"cannot write a graph as {out.name}; use a .svg, .png or .dot path")
    write_bytes_atomic(out, data)
    return out


# ---- matplotlib ------------------------------------------------------------------------
def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(f"drawing needs matplotlib: {_EXTRA}") from None
    return plt


def _save(fig: Any, out: Path) -> Path:
    """Write a figure atomically in the format of `out`'s suffix (PNG, SVG, PDF)."""
    plt = _pyplot()
    buf = io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none"}):  # SVG text stays searchable text
        fig.savefig(buf, format=out.suffix.lstrip(".").lower() or "png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(out, buf.getvalue())
    return out


# ---- attention maps --------------------------------------------------------------------
def attention_maps(model: Any, ids: Sequence[int]) -> list[np.ndarray]:
    """The attention probabilities of every layer for the token ids of one prompt: a list
    of n_layer arrays (n_head, T, T), row t the distribution of query t over the keys.
    `model` is a `GPT` or a `Decoder` (`npllm.runs.load_run(run).model`)."""
    from npllm.decoder import as_decoder

    decoder = as_decoder(model)
    idx = decoder.check_idx(np.asarray([list(ids)]))
    if idx.shape[1] == 0 or idx.shape[1] > decoder.config.block_size:
        raise DataError(
            f"a prompt of {idx.shape[1]} tokens does not fit the model's context of "
            f"{decoder.config.block_size}; give 1 to {decoder.config.block_size} tokens"
        )
    decoder.attention_maps = []
    try:
        decoder.forward(idx)
        return [att[0] for att in decoder.attention_maps]
    finally:
        decoder.attention_maps = None


def draw_attention(
    maps: Sequence[np.ndarray],
    tokens: Sequence[str],
    out: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """A grid of heatmaps, one row per layer and one column per head, of `maps` as
    `attention_maps` returns them; the tokens label the axes (queries down, keys across)."""
    plt = _pyplot()
    n_layer, n_head, T = len(maps), maps[0].shape[0], maps[0].shape[1]
    size = min(2.6, max(1.4, 0.22 * T))
    fig, axes = plt.subplots(
        n_layer, n_head, figsize=(size * n_head + 1, size * n_layer + 0.8), squeeze=False
    )
    # escaped (a newline shows as \n), and a space as a visible dot
    labels = [repr(t)[1:-1].replace(" ", "·") for t in tokens] if T <= 32 else None
    for layer, att in enumerate(maps):
        for head in range(n_head):
            ax = axes[layer][head]
            ax.imshow(att[head], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if labels and layer == n_layer - 1:
                ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
            if labels and head == 0:
                ax.set_yticks(range(T), labels, fontsize=6)
    fig.suptitle(title or "attention (rows: queries, columns: keys)", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out))


# ---- kernel benchmark ------------------------------------------------------------------
def kernel_ratios(results: str | os.PathLike) -> dict[str, list[tuple[str, float, float]]]:
    """From a RESULTS.md written by `npllm bench kernels --write`: for each shape of its
    "Kernels" section, the rows (kernel pass, Numba/torch, NumPy/torch) of the table of
    each pass (medians; below 1 is faster than PyTorch)."""
    path = Path(results)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise DataError(
            f"cannot read {path}; pass the benchmarks' RESULTS.md with --results"
        ) from None
    match = re.search(r"^## Kernels\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not match:
        raise DataError(f"{path} has no '## Kernels' section; run `npllm bench kernels --write`")
    shapes: dict[str, list[tuple[str, float, float]]] = {}
    shape, in_table = None, False
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("### "):
            shape = line[4:].split(":")[0].strip()
            shapes[shape] = []
        elif cells[:2] == ["kernel", "pass"] and cells[-2:] == ["Numba/torch", "NumPy/torch"]:
            in_table = True  # the table of each pass: | kernel | pass | ms... | ratios |
        elif not line.startswith("|"):
            in_table = False
        elif in_table and shape and not line.startswith("|-"):
            try:
                ratios = [float(c.split()[0]) for c in cells[-2:]]
            except (ValueError, IndexError):
                raise DataError(f"{path}: cannot read the ratios of the row {line!r}") from None
            shapes[shape].append((f"{cells[0]} {cells[1]}", *ratios))
    shapes = {k: v for k, v in shapes.items() if v}
    if not shapes:
        raise DataError(f"{path}'s Kernels section holds no per-pass table")
    return shapes


def draw_kernel_ratios(
    ratios: Mapping[str, Sequence[tuple[str, float, float]]], out: str | os.PathLike
) -> Path:
    """Horizontal bars of each kernel pass's time as a ratio to PyTorch's (log scale; the
    line at 1 is PyTorch), Numba and the NumPy references side by side, a panel per shape."""
    plt = _pyplot()
    n = max(len(rows) for rows in ratios.values())
    fig, axes = plt.subplots(
        1, len(ratios), figsize=(5.2 * len(ratios), 0.32 * n + 1.6), squeeze=False
    )
    for ax, (shape, rows) in zip(axes[0], ratios.items()):
        y = np.arange(len(rows))[::-1]
        names, numba, numpy_ = zip(*rows)
        ax.barh(y + 0.2, numba, height=0.4, color="tab:blue", label="Numba / torch")
        ax.barh(y - 0.2, numpy_, height=0.4, color="tab:gray", label="NumPy / torch")
        for yy, r in zip(y, numba):
            ax.annotate(f"{r:.2f}", (r, yy + 0.2), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=7)  # fmt: skip
        ax.axvline(1.0, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_yticks(y, names, fontsize=8)
        ax.set_title(shape, fontsize=10)
        ax.set_xlabel("time / PyTorch's (below 1: faster)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, Path(out))


# ---- loss curves -----------------------------------------------------------------------
def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(
            f"no metrics.jsonl in {run_dir}; pass a run folder of `npllm train`"
        ) from None
    records = []
    for i, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(f"{path} line {i} is not JSON; the file is damaged") from None
    return records


def loss_curve(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the loss curves of a run to `out` (default RUN/loss.png); returns its path."""
    plt = _pyplot()
    records = read_metrics(run_dir)
    steps = [(r["iter"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["iter"], r["train_loss"], r["val_loss"]) for r in records if "val_loss" in r]
    if not steps and not evals:
        raise DataError(f"{run_dir}/metrics.jsonl holds no losses yet; train longer")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if steps:
        ax.plot(*zip(*steps), lw=0.8, alpha=0.5, label="train (batch)")
    if evals:
        it, tr, va = zip(*evals)
        ax.plot(it, tr, "o-", label="train (eval)")
        ax.plot(it, va, "o-", label="val (eval)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(Path(run_dir).resolve().name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, Path(out) if out else Path(run_dir) / "loss.png")
