"""The `cpu-small` preset on tinyshakespeare (characters), npllm beside a PyTorch trainer.

Both runs share everything but the framework: the prepared data (npllm's char tokenizer,
90/10 split), the initial weights (npllm's seeded init, loaded by name into the PyTorch
reference model of tests/model/torch_gpt.py: explicit attention, tied lm_head), the
batches (the same NumPy generators as `npllm.train`), AdamW with decay on 2-D weights
only, the warmup + cosine schedule, gradient clipping, and the evaluation (the same
`eval_iters` batches per split at iteration 0, every `eval_interval` and at the end).
Each framework runs in its own process at 2 threads, one after the other; the wall time
includes the evaluations.

    python benchmarks/shakespeare_char.py                       # 2,000 iterations, both
    python benchmarks/shakespeare_char.py --iters 500 --write   # shorter; update RESULTS.md
    python benchmarks/shakespeare_char.py --data PATH           # another copy of the text
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "tinyshakespeare.txt"


def configs(vocab_size: int, args: argparse.Namespace):
    from npllm.gpt import GPTConfig
    from npllm.train import TrainConfig, preset_values, split_overrides

    model, train = split_overrides(preset_values("cpu-small"))
    train.update(
        max_iters=args.iters,
        warmup_iters=min(train["warmup_iters"], args.iters),
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
    )
    return GPTConfig(vocab_size=vocab_size, **model), TrainConfig(**train)


def run_npllm(data_dir: str, args: argparse.Namespace) -> dict:
    from npllm.data import load_meta
    from npllm.train import train

    model_config, config = configs(int(load_meta(data_dir)["vocab_size"]), args)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(data_dir, run_dir, model_config, config, progress=False, echo=True)
        evals = [
            json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        ]
    evals = [
        (r["iter"], r["train_loss"], r["val_loss"], r["elapsed"]) for r in evals if "val_loss" in r
    ]
    return {"seconds": result.seconds, "evals": evals}


def run_torch(data_dir: str, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from npllm.data import get_batch, load_meta, load_split
    from npllm.gpt import GPT
    from tests.model.torch_gpt import TorchConfig, torch_gpt_from

    torch.set_num_threads(2)
    model_config, c = configs(int(load_meta(data_dir)["vocab_size"]), args)
    init = GPT(model_config, seed=c.seed).state_dict()
    mc = model_config
    model = torch_gpt_from(
        init,
        TorchConfig(
            mc.vocab_size,
            mc.block_size,
            mc.n_layer,
            mc.n_head,
            mc.n_embd,
            mc.bias,
            mc.mlp_hidden,
            mc.activation,
        ),
    )
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": c.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=c.learning_rate,
        betas=(c.beta1, c.beta2),
    )
    train_data, val_data = load_split(data_dir, "train"), load_split(data_dir, "val")
    B, T = c.batch_size, mc.block_size
    batch_rng = np.random.default_rng([1, c.seed])  # as npllm.train

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        rng = np.random.default_rng([2, c.seed])
        out = []
        for data in (train_data, val_data):
            losses = []
            for _ in range(c.eval_iters):
                x, y = get_batch(data, B, T, rng)
                losses.append(model(torch.from_numpy(x), torch.from_numpy(y))[1].item())
            out.append(float(np.mean(losses)))
        model.train()
        return out

    t0 = time.perf_counter()
    evals = [(0, *estimate_loss(), 0.0)]
    print(f"iter 0: train loss {evals[-1][1]:.4f}, val loss {evals[-1][2]:.4f}", flush=True)
    for it in range(c.max_iters):
        for g in opt.param_groups:
            g["lr"] = c.lr_at(it)
        x, y = get_batch(train_data, B, T, batch_rng)
        _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n = it + 1
        if n % c.eval_interval == 0 or n == c.max_iters:
            evals.append((n, *estimate_loss(), time.perf_counter() - t0))
            print(
                f"iter {n}: train loss {evals[-1][1]:.4f}, val loss {evals[-1][2]:.4f}, "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
    return {"seconds": time.perf_counter() - t0, "evals": evals}


def child(framework: str, data_dir: str, args: argparse.Namespace) -> dict:
    """Run one framework in a fresh process; its result comes back as the last line."""
    cmd = [
        sys.executable,
        __file__,
        "--only",
        framework,
        "--data-dir",
        data_dir,
        "--iters",
        str(args.iters),
        "--eval-interval",
        str(args.eval_interval),
        "--eval-iters",
        str(args.eval_iters),
    ]
    print(f"== {framework}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="tinyshakespeare text file")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-iters", type=int, default=200)
    p.add_argument(
        "--first",
        choices=("npllm", "torch"),
        default="npllm",
        help="which framework runs first (the machine's load drifts)",
    )
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--only", choices=("npllm", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only:
        run = run_npllm if args.only == "npllm" else run_torch
        print(json.dumps(run(args.data_dir, args)))
        return 0

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import machine_info, write_section
    from npllm.data import prepare

    with tempfile.TemporaryDirectory() as data_dir:
        meta = prepare(args.data, data_dir)
        order = ("npllm", "torch") if args.first == "npllm" else ("torch", "npllm")
        results = {fw: child(fw, data_dir, args) for fw in order}
        results = {fw: results[fw] for fw in ("npllm", "torch")}
    rows = []
    for fw, r in results.items():
        it, tr, va, _ = r["evals"][-1]
        # the fastest stretch between two evaluations: the run's speed when the shared
        # machine was quietest (each stretch includes one evaluation)
        stretches = [(b[3] - a[3]) / (b[0] - a[0]) for a, b in zip(r["evals"], r["evals"][1:])]
        rows.append(
            f"| {fw} | {it} | {tr:.4f} | {va:.4f} | {r['seconds']:.0f} s | "
            f"{1e3 * r['seconds'] / args.iters:.0f} ms | {1e3 * min(stretches):.0f} ms |"
        )
    gap = results["npllm"]["evals"][-1][2] - results["torch"]["evals"][-1][2]
    ratio = results["npllm"]["seconds"] / results["torch"]["seconds"]
    info = machine_info()
    body = "\n".join(
        [
            f"`python benchmarks/shakespeare_char.py --iters {args.iters} --eval-interval "
            f"{args.eval_interval} --eval-iters {args.eval_iters} --first {args.first}`: the "
            "cpu-small preset on "
            f"tinyshakespeare ({meta['train_tokens']:,} train / {meta['val_tokens']:,} val "
            f"characters, vocab {meta['vocab_size']}), same init, batches, schedule and "
            "evaluation for both; wall time includes the evaluations.",
            "",
            "| framework | iters | train loss | val loss | wall time | per iter | per iter, "
            "fastest stretch |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"val loss npllm - torch: {gap:+.4f}; wall time npllm / torch: {ratio:.2f}",
            "",
            "Loss curves (iter: val): "
            + "; ".join(
                f"{fw} " + ", ".join(f"{i}: {v:.3f}" for i, _, v, _ in r["evals"])
                for fw, r in results.items()
            ),
            "",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        ]
    )
    print(body)
    if args.write:
        write_section("Shakespeare char", body)
    return 0 if math.isfinite(gap) else 1


if __name__ == "__main__":
    sys.exit(main())
