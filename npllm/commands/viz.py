"""`npllm viz WHAT`: the pictures of `npllm.viz` (needs the `viz` extra).

npllm viz graph [--run RUN] [--out graph.svg]     the autograd graph of a training loss
npllm viz attention RUN --prompt TEXT             RUN/attention.png, layers x heads
npllm viz kernels [--results RESULTS.md]          kernels.png, ratios to PyTorch
npllm viz loss RUN                                RUN/loss.png (as `npllm plot RUN`)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# benchmarks/RESULTS.md of a source checkout (an editable install)
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "RESULTS.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    g = sub.add_parser(
        "graph",
        help="the autograd graph of one training loss, with shapes and gradient norms",
        description="Draw the graph of a GPT's loss on one short batch, after its backward: "
        "a box per tensor (name, shape, gradient norm), an oval per op. Without --run, a "
        "one-layer GPT made on the spot.",
    )
    g.add_argument("--run", help="a run folder: draw its model's graph (default: a tiny GPT)")
    g.add_argument("--tokens", type=int, default=4, help="sequence length of the batch (4)")
    g.add_argument("--out", help="an .svg, .png or .dot file (default RUN/graph.svg or graph.svg)")
    a = sub.add_parser(
        "attention",
        help="a run's attention maps for a prompt, one heatmap per layer and head",
        description="Draw every layer's and head's attention probabilities for a prompt.",
    )
    a.add_argument("run", metavar="RUN", help="a run folder of `npllm train`")
    a.add_argument("--prompt", required=True, help="the text to attend over")
    a.add_argument("--checkpoint", default="best", help="best (default) or last")
    a.add_argument("--quantized", action="store_true", help="use the run's int8 checkpoint")
    a.add_argument("--out", help="a .png or .svg file (default RUN/attention.png)")
    k = sub.add_parser(
        "kernels",
        help="the kernel benchmark as bars of the ratio to PyTorch",
        description="Draw the per-pass kernel timings of benchmarks/RESULTS.md ('Kernels', "
        "written by `npllm bench kernels --write`) as ratios to PyTorch.",
    )
    k.add_argument("--results", help="a RESULTS.md (default: the checkout's benchmarks/)")
    k.add_argument("--out", default="kernels.png", help="a .png or .svg file (kernels.png)")
    lo = sub.add_parser("loss", help="a run's loss curves (as `npllm plot`)")
    lo.add_argument("run", metavar="RUN", help="a run folder of `npllm train`")
    lo.add_argument("--out", help="a .png or .svg file (default RUN/loss.png)")


def run(args: argparse.Namespace) -> int:
    from npllm import viz

    if args.what == "graph":
        out = _graph(args)
    elif args.what == "attention":
        out = _attention(args)
    elif args.what == "kernels":
        ratios = viz.kernel_ratios(args.results or RESULTS)
        out = viz.draw_kernel_ratios(ratios, args.out)
    else:
        out = viz.loss_curve(args.run, args.out)
    print(f"wrote {out}")
    return 0


def _graph(args: argparse.Namespace) -> Path:
    import numpy as np

    from npllm import viz
    from npllm.errors import ConfigError

    if args.run:
        from npllm.runs import load_run

        model = load_run(args.run).model
    else:
        from npllm.gpt import GPT, GPTConfig

        model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8))
    T = args.tokens
    if not 1 <= T <= model.config.block_size:
        raise ConfigError(f"--tokens must be in [1, {model.config.block_size}], got {T}")
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(1, T + 1))
    model.train()
    _, loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward(retain_grads=True)
    dot = viz.draw_dot(loss, names={**dict(model.named_parameters()), "loss": loss})
    default = Path(args.run) / "graph.svg" if args.run else Path("graph.svg")
    return viz.render(dot, args.out or default)


def _attention(args: argparse.Namespace) -> Path:
    from npllm import viz
    from npllm.errors import DataError
    from npllm.runs import load_run

    loaded = load_run(args.run, args.checkpoint, quantized=args.quantized)
    ids = loaded.tokenizer.encode(args.prompt)
    if not ids:
        raise DataError("--prompt is empty; give some text to attend over")
    block = loaded.config.block_size
    if len(ids) > block:
        print(f"[the prompt's {len(ids)} tokens are cut to the last {block}]", file=sys.stderr)
        ids = ids[-block:]
    maps = viz.attention_maps(loaded.model, ids)
    tokens = [loaded.tokenizer.decode([i]) for i in ids]
    title = f"{Path(args.run).resolve().name} ({loaded.name}): attention over the prompt"
    return viz.draw_attention(maps, tokens, args.out or Path(args.run) / "attention.png", title)
