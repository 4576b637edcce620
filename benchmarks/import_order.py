"""Does npllm's speed depend on what was imported before it, and does importing npllm slow
another library down?

Part 1: processes that import (and use once) torch, numpy or scipy (if installed) before
npllm, or npllm first, then time npllm's cpu-small and guppy training steps and a decode
call at batch 1 with the KV cache, alternating the orders round after round. The ratio
to the npllm-first figure is the import-order penalty (issue 10 asks for <= 1.10).

Part 2: torch's own cpu-small training step in a process that never saw npllm, beside one
that imported npllm and ran an npllm training step first.

Same weights and batches as benchmarks/train_step.py (written once by an npllm process).

    python benchmarks/import_order.py                 # 3 rounds
    python benchmarks/import_order.py --rounds 5 --write
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Job,
    alternate,
    command_line,
    header,
    load_average,
    log,
    ratio,
    run_worker,
    stats,
    time_calls,
    write_section,
)
from benchmarks.train_step import (  # noqa: E402
    load,
    model_config,
    npllm_trainer,
    prepare,
    torch_trainer,
)


def use_first(name: str) -> None:
    """Import `name` and make it start its thread pools, as a program using it would."""
    if name == "torch":
        import torch

        torch.randn(256, 256) @ torch.randn(256, 256)
    elif name == "numpy":
        import numpy as np

        np.ones((256, 256), np.float32) @ np.ones((256, 256), np.float32)
    elif name == "scipy":
        import numpy as np
        import scipy.linalg

        scipy.linalg.lu_factor(np.eye(256) + 1.0)


def steps(step, xs, ys, warmup: int, n: int) -> list[float]:
    for i in range(warmup):
        step(xs[i], ys[i])
    out = []
    for i in range(warmup, warmup + n):
        t0 = time.perf_counter()
        step(xs[i], ys[i])
        out.append(time.perf_counter() - t0)
    return out


def npllm_worker(spec: dict) -> dict:
    """Import `first` (unless npllm), then npllm; time the training steps and decodes."""
    if spec["first"] != "npllm":
        use_first(spec["first"])
    import numpy as np

    import npllm  # noqa: F401
    from npllm.decoder import Decoder
    from npllm.generate import generate
    from npllm.gpt import GPTConfig
    from npllm.quant import load_weights

    samples = {}
    for shape in spec["train"]:
        meta, weights, xs, ys = load(spec["dir"], shape)
        step = npllm_trainer(meta["config"], weights)
        samples[f"{shape} train step"] = steps(step, xs, ys, spec["warmup"], spec["steps"])
    for shape in spec["decode"]:
        meta, weights, _, _ = load(spec["dir"], shape)
        cfg = GPTConfig(**model_config(meta["config"]))
        dec, n = Decoder(cfg, load_weights(weights)), cfg.block_size - 1
        per_call = time_calls(
            lambda d=dec, n=n: generate(d, np.array([0]), n, greedy=True),
            spec["steps"],
            warmup=spec["warmup"],
        )
        samples[f"{shape} decode step"] = [t / n for t in per_call]
    return {"samples": samples}


def torch_worker(spec: dict) -> dict:
    """torch's training step; with `after_npllm`, after an npllm process-mate ran a step."""
    if spec["after_npllm"]:
        import npllm  # noqa: F401

        meta, weights, xs, ys = load(spec["dir"], spec["shape"])
        npllm_trainer(meta["config"], weights)(xs[0], ys[0])
    import torch  # noqa: F401

    meta, weights, xs, ys = load(spec["dir"], spec["shape"])
    step = torch_trainer(meta["config"], weights)
    return {"samples": {"step": steps(step, xs, ys, spec["warmup"], spec["steps"])}}


WORKERS = {"prepare": prepare, "npllm": npllm_worker, "torch": torch_worker}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--worker":
        return run_worker(argv, WORKERS)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="processes per import order")
    ap.add_argument("--steps", type=int, default=8, help="timed steps or decode calls")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps or decode calls")
    ap.add_argument("--train", nargs="+", default=["cpu-small", "guppy"], help="shapes")
    ap.add_argument("--decode", nargs="+", default=["cpu-small", "guppy"], help="shapes")
    ap.add_argument("--torch-shape", default="cpu-small", help="shape of part 2")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    script = Path(__file__)
    firsts = ["npllm", "torch", "numpy"]
    if importlib.util.find_spec("scipy") is not None:
        firsts.append("scipy")
    load0 = load_average()
    with tempfile.TemporaryDirectory() as folder:
        n = args.warmup + args.steps
        for shape in dict.fromkeys([*args.train, *args.decode, args.torch_shape]):
            job = Job(
                "prepare",
                "prepare",
                {"framework": "npllm", "shape": shape, "dir": folder, "n_batches": n},
            )
            alternate(script, [job], 1, echo=lambda _: None)
        common = {"dir": folder, "steps": args.steps, "warmup": args.warmup}
        log("== part 1: import order")
        jobs = [
            Job(
                f"{first} first",
                "npllm",
                # only the torch-first process may hold torch; the others are checked
                {
                    "framework": "mixed" if first == "torch" else "npllm",
                    "first": first,
                    "train": args.train,
                    "decode": args.decode,
                    **common,
                },
            )
            for first in firsts
        ]
        part1 = alternate(script, jobs, args.rounds)
        log("== part 2: torch with and without npllm in its process")
        tjobs = [
            Job(
                label,
                "torch",
                {"framework": fw, "after_npllm": after, "shape": args.torch_shape, **common},
            )
            for label, fw, after in (
                ("torch alone", "torch", False),
                ("torch after npllm", "mixed", True),
            )
        ]
        part2 = alternate(script, tjobs, args.rounds)
    keys = list(part1["npllm first"][0]["samples"])
    ref = "npllm first"
    lines = [
        f"Part 1: npllm's speed by what the process imported (and used once) first; "
        f"ms per training step or per decoded token; {args.rounds} rounds, each process "
        f"{args.warmup} warm-up + {args.steps} timed; ratio to npllm first (target <= 1.10).",
        "",
        "| measure | " + " | ".join(part1) + " |",
        "|---|" + "---|" * len(part1),
    ]
    worst = 0.0
    for key in keys:
        base = stats(part1[ref], key)
        cells = []
        for label, runs in part1.items():
            s = stats(runs, key)
            digits = 3 if "decode" in key else 1
            cells.append(s.fmt(1e3, digits) + ("" if label == ref else f"; **{ratio(s, base)}**"))
            worst = max(worst, s.median / base.median)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    alone, after = stats(part2["torch alone"], "step"), stats(part2["torch after npllm"], "step")
    lines += [
        "",
        f"Worst import-order ratio: {worst:.2f}.",
        "",
        f"Part 2: torch's {args.torch_shape} training step, ms: alone {alone.fmt(1e3)}; in a "
        f"process that imported npllm and ran an npllm step first {after.fmt(1e3)}; ratio "
        f"**{ratio(after, alone)}**.",
    ]
    head = header(
        {**part1, **part2}, (load0, load_average()), command_line("import_order.py", argv)
    )
    text = head + "\n" + "\n".join(lines) + "\n"
    print(text)
    if args.write or args.results:
        write_section("Import order", text, *([args.results] if args.results else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
