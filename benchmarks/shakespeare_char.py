"""The `cpu-small` preset on tinyshakespeare (characters), npllm beside a PyTorch trainer,
each in its own processes with its own default settings.

A first npllm process prepares the data (npllm's char tokenizer, 90/10 split) and writes
to a temporary .npz everything the PyTorch trainer needs to do the same run without
importing npllm: the initial weights (npllm's seeded init, loaded by name into the
PyTorch reference model of tests/model/torch_gpt.py: torch's scaled_dot_product_attention,
as nanoGPT's, tied lm_head),
every training batch (drawn by npllm.data.get_batch from the generator npllm.train
uses), the evaluation batches, and the learning rate of every iteration (warmup +
cosine). npllm trains with `npllm.train.train`, the trainer of `npllm train`; PyTorch with
AdamW (decay on 2-D weights only) and gradient clipping. Both evaluate the same batches at
iteration 0, every `eval_interval` and at the end; wall time includes the evaluations.

A run of 2,000 iterations takes about 4 minutes per framework on 2 cores, so the default
is one round (npllm then torch); `--rounds 3` alternates npllm/torch, torch/npllm, ...

    python benchmarks/shakespeare_char.py                       # 2,000 iterations, 1 round
    python benchmarks/shakespeare_char.py --iters 500 --rounds 2 --write
    python benchmarks/shakespeare_char.py --data PATH           # another copy of the text
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Job,
    Stats,
    alternate,
    command_line,
    header,
    load_average,
    log,
    ratio,
    run_worker,
    write_section,
)

DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "tinyshakespeare.txt"


def configs(vocab_size: int, spec: dict):
    from npllm.config import TrainConfig, preset_values, split_overrides
    from npllm.gpt import GPTConfig

    model, train = split_overrides(preset_values("cpu-small"))
    train.update(
        max_iters=spec["iters"],
        warmup_iters=min(train["warmup_iters"], spec["iters"]),
        eval_interval=spec["eval_interval"],
        eval_iters=spec["eval_iters"],
    )
    return GPTConfig(vocab_size=vocab_size, **model), TrainConfig(**train)


def prepare_worker(spec: dict) -> dict:
    """npllm process: the prepared data folder, and run.npz + run.json for the torch side."""
    import dataclasses

    import numpy as np

    import npllm  # noqa: F401
    from npllm.data import get_batch, load_split, prepare
    from npllm.gpt import GPT

    folder = Path(spec["dir"])
    meta = prepare(spec["data"], folder / "data")
    data_dir = str(folder / "data")
    mc, c = configs(int(meta["vocab_size"]), spec)
    B, T = c.batch_size, mc.block_size
    train_data, val_data = load_split(data_dir, "train"), load_split(data_dir, "val")

    def chunks(data, n, rng):
        out = np.empty((n, B, T + 1), np.int32)
        for i in range(n):
            x, y = get_batch(data, B, T, rng)
            out[i, :, :-1], out[i, :, -1] = x, y[:, -1]
        return out

    batch_rng = np.random.default_rng([1, c.seed])  # as npllm.train
    eval_rng = np.random.default_rng([2, c.seed])  # restarted at every evaluation
    arrays = {
        "train": chunks(train_data, c.max_iters, batch_rng),
        "eval_train": chunks(train_data, c.eval_iters, eval_rng),
        "eval_val": chunks(val_data, c.eval_iters, eval_rng),
        "lr": np.array([c.lr_at(it) for it in range(c.max_iters)]),
        **{"w:" + k: v for k, v in GPT(mc, seed=c.seed).state_dict().items()},
    }
    np.savez(folder / "run.npz", **arrays)
    run = {
        "model": dataclasses.asdict(mc),
        "train": {k: getattr(c, k) for k in ("max_iters", "eval_interval", "grad_clip")}
        | {"weight_decay": c.weight_decay, "betas": [c.beta1, c.beta2]},
        "meta": {k: meta[k] for k in ("train_tokens", "val_tokens", "vocab_size")},
    }
    (folder / "run.json").write_text(json.dumps(run))
    return {"samples": {}, **run}


def npllm_worker(spec: dict) -> dict:
    import npllm  # noqa: F401
    from npllm.data import load_meta
    from npllm.train import train

    data_dir = str(Path(spec["dir"]) / "data")
    model_config, config = configs(int(load_meta(data_dir)["vocab_size"]), spec)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(data_dir, run_dir, model_config, config, progress=False, echo=False)
        evals = [
            json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        ]
    evals = [
        (r["iter"], r["train_loss"], r["val_loss"], r["elapsed"]) for r in evals if "val_loss" in r
    ]
    return {"samples": {"wall": [result.seconds]}, "evals": evals}


def torch_worker(spec: dict) -> dict:
    import numpy as np
    import torch

    from benchmarks.train_step import torch_model_and_adamw

    folder = Path(spec["dir"])
    run = json.loads((folder / "run.json").read_text())
    with np.load(folder / "run.npz") as z:
        arrays = {k: z[k] for k in z.files}
    init = {k[2:]: v for k, v in arrays.items() if k.startswith("w:")}
    t = run["train"]
    model, opt = torch_model_and_adamw(run["model"], init, 0.0, t["weight_decay"], t["betas"])
    params = list(model.parameters())

    def xy(chunk):
        chunk = torch.from_numpy(chunk.astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = [
            float(np.mean([model(*xy(ch))[1].item() for ch in arrays[split]]))
            for split in ("eval_train", "eval_val")
        ]
        model.train()
        return out

    t0 = time.perf_counter()
    evals = [(0, *estimate_loss(), 0.0)]
    for it in range(t["max_iters"]):
        for g in opt.param_groups:
            g["lr"] = float(arrays["lr"][it])
        _, loss = model(*xy(arrays["train"][it]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        n = it + 1
        if n % t["eval_interval"] == 0 or n == t["max_iters"]:
            evals.append((n, *estimate_loss(), time.perf_counter() - t0))
    return {"samples": {"wall": [time.perf_counter() - t0]}, "evals": evals}


WORKERS = {"prepare": prepare_worker, "npllm": npllm_worker, "torch": torch_worker}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--worker":
        return run_worker(argv, WORKERS)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="tinyshakespeare text file")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-iters", type=int, default=200)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="runs per framework, alternating (each ~4 min at 2,000 iterations)",
    )
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_file():
        print(f"error: no text file at {data}; pass --data PATH", file=sys.stderr)
        return 2
    spec = {"iters": args.iters, "eval_interval": args.eval_interval, "eval_iters": args.eval_iters}
    script = Path(__file__)
    load0 = load_average()
    with tempfile.TemporaryDirectory() as folder:
        spec["dir"] = folder
        log("== preparing the data and the shared run")
        prep = Job("prepare", "prepare", {"framework": "npllm", "data": str(data), **spec})
        meta = alternate(script, [prep], 1, echo=lambda _: None)["prepare"][0]["meta"]
        jobs = [Job(fw, fw, {"framework": fw, **spec}) for fw in ("npllm", "torch")]
        results = alternate(script, jobs, args.rounds)
    rows = []
    for fw, runs in results.items():
        for r in runs:
            it, tr, va, _ = r["evals"][-1]
            # the fastest stretch between two evaluations: the run's speed when the
            # shared machine was quietest (each stretch includes one evaluation)
            ev = r["evals"]
            stretch = min((b[3] - a[3]) / (b[0] - a[0]) for a, b in zip(ev, ev[1:]))
            rows.append(
                f"| {fw} | {r['round'] + 1} | {it} | {tr:.4f} | {va:.4f} | "
                f"{r['samples']['wall'][0]:.0f} s | {1e3 * r['samples']['wall'][0] / it:.0f} ms "
                f"| {1e3 * stretch:.0f} ms |"
            )
    final = {fw: [r["evals"][-1][2] for r in runs] for fw, runs in results.items()}
    gap = max(abs(a - b) for a in final["npllm"] for b in final["torch"])
    walls = {fw: Stats([r["samples"]["wall"] for r in runs]) for fw, runs in results.items()}
    body = [
        f"The cpu-small preset on tinyshakespeare ({meta['train_tokens']:,} train / "
        f"{meta['val_tokens']:,} val characters, vocab {meta['vocab_size']}), same init, "
        f"batches, schedule and evaluation for both, {args.iters} iterations, evaluation "
        f"every {args.eval_interval} ({args.eval_iters} batches a split); wall time includes "
        f"the evaluations. {args.rounds} round(s), alternating.",
        "",
        "| framework | round | iters | train loss | val loss | wall time | per iter | "
        "per iter, fastest stretch |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Wall time npllm / torch (medians): **{ratio(walls['npllm'], walls['torch'])}**; "
        f"largest |val loss npllm - torch|: {gap:.4f}.",
        "",
        "Loss curves (iter: val, first round): "
        + "; ".join(
            f"{fw} " + ", ".join(f"{i}: {v:.3f}" for i, _, v, _ in runs[0]["evals"])
            for fw, runs in results.items()
        ),
    ]
    head = header(results, (load0, load_average()), command_line("shakespeare_char.py", argv))
    text = head + "\n" + "\n".join(body) + "\n"
    print(text)
    if args.write or args.results:
        write_section("Shakespeare char", text, *([args.results] if args.results else []))
    if not math.isfinite(gap) or gap > 0.01:
        print(f"VAL LOSS MISMATCH: npllm and torch end {gap:.4f} apart")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
