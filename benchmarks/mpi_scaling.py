"""Data-parallel training over MPI: tokens/s and scaling efficiency of `npllm train` on
one process and on N = 2 ranks of this machine, the allreduce it adds per step, and a
projection to more nodes.

Every run is the real command, `[mpiexec -n N] npllm train` on a synthetic corpus, each a
fresh process (or job), alternated in rounds so that a slow minute of the shared machine
lands on every configuration. tokens/s is what the run logs to metrics.jsonl (global
tokens per second of training, evaluation excluded), the median of its log records after
the first (which holds the warm-up). Four configurations:
- `1 process`: no MPI, Numba on every core (what a user gets without MPI);
- `1 process, 1 thread`: NUMBA_NUM_THREADS=1, the per-core baseline;
- `mpiexec -n N`: one rank per core, 1 Numba thread each (npllm.distributed sets it);
- `mpiexec -n N --zero1`: the same with AdamW's moments sharded (ZeRO stage 1).
Scaling efficiency = tokens/s(N ranks) / (N x tokens/s(1 process, 1 thread)); the speed-up
over the `1 process` run is what MPI buys on this machine.

The allreduce is timed on its own (`--worker allreduce` under mpiexec: `GradBuffer.allreduce`
on the model's real gradient buffer). The projection assumes nodes like this one, each
keeping its share of the batch (weak scaling), a ring allreduce between nodes that moves
2 (M-1)/M x S bytes per node per step (S: the gradient buffer), plus 2 (M-1) latencies per
bucket, and no overlap with compute: efficiency = t_c / (t_c + t_comm), and communication
dominates below the bandwidth at which t_comm = t_c.

    python benchmarks/mpi_scaling.py                      # cpu-small and guppy, N = 1, 2
    python benchmarks/mpi_scaling.py --shape tiny --steps 6 --rounds 1   # a quick check
    npllm bench mpi_scaling --write                       # the same, into RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    command_line,
    cpu_isa,
    cpu_model,
    load_average,
    log,
    write_section,
)

BIN = Path(sys.executable).parent
# name -> flags of `npllm train` (model and global batch)
SHAPES: dict[str, list[str]] = {
    "cpu-small": ["--preset", "cpu-small", "--vocab-size", "65", "--batch-size", "12"],
    "guppy": ["--preset", "guppy", "--vocab-size", "4096", "--batch-size", "16"],
    "tiny": ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16"]
    + ["--vocab-size", "32", "--batch-size", "4"],
}
NODES = (2, 4, 8, 16, 64)
LINKS = {"1 Gb/s": 125e6, "10 Gb/s": 1.25e9, "100 Gb/s": 12.5e9}  # bytes/s


def clean_env(**extra: str) -> dict[str, str]:
    from npllm.distributed import LAUNCHER_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(extra)
    return env


def corpus(folder: Path) -> Path:
    """A prepared data folder of synthetic text (the speed does not depend on the words)."""
    import numpy as np

    from npllm.data import prepare

    words = "to be or not that is the question whether tis nobler in the mind suffer".split()
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(rng.choice(words, size=10)) + "." for _ in range(8000))
    (folder / "corpus.txt").write_text(text + "\n")
    prepare(str(folder / "corpus.txt"), folder / "data")
    return folder / "data"


def train_run(shape: str, ranks: int, threads: int | None, flags: list, data: Path, args) -> dict:
    """One `npllm train` run; returns its tokens/s records and wall time."""
    out = Path(tempfile.mkdtemp(prefix="mpi-scaling-"))
    steps = args.steps
    cmd = [str(BIN / "npllm"), "train", "--data", str(data), "--out", str(out / "run")]
    cmd += SHAPES[shape] + ["--max-iters", str(steps), "--eval-interval", str(steps)]
    cmd += ["--eval-iters", "1", "--log-interval", str(args.log_every), "--quiet", *flags]
    if ranks > 1:
        cmd = [str(BIN / "mpiexec"), "-n", str(ranks), *cmd]
    env = clean_env(**({"NUMBA_NUM_THREADS": str(threads)} if threads else {}))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}")
    records = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    tok_s = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    subprocess.run(["rm", "-rf", str(out)], check=True)
    return {"tokens_per_s": tok_s[1:] or tok_s, "wall": wall}


def allreduce_worker(shape: str, reps: int) -> None:
    """Under mpiexec: time GradBuffer.allreduce on the model's gradient buffer."""
    from npllm.config import preset_values, split_overrides
    from npllm.distributed import init
    from npllm.gpt import GPT, GPTConfig

    flags = SHAPES[shape]
    values: dict = {}
    if "--preset" in flags:
        values.update(split_overrides(preset_values(flags[flags.index("--preset") + 1]))[0])
    for name, value in zip(flags[::2], flags[1::2]):
        key = name[2:].replace("-", "_")
        if key != "preset" and key != "batch_size":
            values[key] = int(value)
    model = GPT(GPTConfig(**values))
    world = init()
    buf = world.grad_buffer(model.parameters())
    buf.attach()
    times = []
    for _ in range(reps + 3):
        world.barrier()
        t0 = time.perf_counter()
        buf.allreduce(1.0, 0.0)
        times.append(time.perf_counter() - t0)
    if world.is_main:
        result = {
            "seconds": statistics.median(times[3:]),
            "bytes": buf.nbytes,
            "numel": buf.numel,
            "buckets": len(buf.buckets),
            "block_size": model.config.block_size,
        }
        print("@@allreduce " + json.dumps(result), flush=True)


def time_allreduce(shape: str, ranks: int, args) -> dict:
    cmd = [str(BIN / "mpiexec"), "-n", str(ranks), sys.executable, __file__]
    cmd += ["--worker", "allreduce", "--shape", shape, "--reps", str(args.reps)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=600)
    line = next((x for x in res.stdout.splitlines() if x.startswith("@@allreduce ")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"the allreduce worker failed:\n{res.stdout}{res.stderr}")
    return json.loads(line.split(" ", 1)[1])


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def shape_report(shape: str, runs: dict[str, list[dict]], ar: dict, ranks: int, args) -> str:
    med = {k: statistics.median([statistics.median(r["tokens_per_s"]) for r in v])
           for k, v in runs.items()}  # fmt: skip
    per_run = {k: [statistics.median(r["tokens_per_s"]) for r in v] for k, v in runs.items()}
    base, core = med["1 process"], med["1 process, 1 thread"]
    lines = [
        f"### {shape} ({' '.join(SHAPES[shape])}; global batch kept)",
        "",
        "| run | threads per process | tokens/s median (range of runs) | vs 1 process "
        "| scaling efficiency |",
        "|---|---|---|---|---|",
    ]
    for label, threads in (
        ("1 process", os.cpu_count()),
        ("1 process, 1 thread", 1),
        (f"mpiexec -n {ranks}", 1),
        (f"mpiexec -n {ranks} --zero1", 1),
    ):
        eff = med[label] / (ranks * core) if label.startswith("mpiexec") else None
        lines.append(
            f"| {label} | {threads} | {median_range(per_run[label])} | {med[label] / base:.2f} "
            f"| {f'{eff:.2f}' if eff is not None else '-'} |"
        )
    flags = SHAPES[shape]
    batch = int(flags[flags.index("--batch-size") + 1])
    step = batch * ar["block_size"] / med[f"mpiexec -n {ranks}"]  # seconds per step at N ranks
    t_c = max(step - ar["seconds"], 1e-9)
    size = ar["bytes"]
    lines += [
        "",
        f"Allreduce per step: one flat buffer of {ar['numel']:,} float32 gradients + 2 scalars "
        f"= {size / 1e6:.2f} MB in {ar['buckets']} bucket(s); {ar['seconds'] * 1e3:.2f} ms "
        f"between {ranks} ranks of this machine ({size / ar['seconds'] / 1e9:.2f} GB/s), "
        f"{100 * ar['seconds'] / step:.1f}% of the {step * 1e3:.1f} ms step. AdamW state a "
        f"rank: {8 * ar['numel'] / 1e6:.2f} MB, with --zero1 {8 * ar['numel'] / ranks / 1e6:.2f} "
        "MB (plus one parameter-sized all-gather a step).",
        "",
        f"Projection to M nodes like this one (compute t_c = {t_c * 1e3:.1f} ms a step, "
        f"latency {args.latency_us:g} us, no overlap):",
        "",
        "| nodes M | bytes sent per node a step | link at which comm = compute | "
        + " | ".join(f"efficiency at {k}" for k in LINKS)
        + " |",
        "|---|---|---|" + "---|" * len(LINKS),
    ]
    for m in NODES:
        moved = 2 * (m - 1) / m * size
        lat = 2 * (m - 1) * ar["buckets"] * args.latency_us * 1e-6
        if lat < t_c:
            crossing = f"{moved / (t_c - lat) * 8 / 1e9:.2f} Gb/s"
        else:
            crossing = f"none: the latencies alone ({lat * 1e3:.1f} ms) exceed compute"
        effs = [t_c / (t_c + moved / bw + lat) for bw in LINKS.values()]
        lines.append(
            f"| {m} | {moved / 1e6:.2f} MB | {crossing} | "
            + " | ".join(f"{e:.2f}" for e in effs)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", choices=sorted(SHAPES), help="repeatable")
    p.add_argument("--ranks", type=int, default=2, help="N of the MPI runs (default 2)")
    p.add_argument("--steps", type=int, default=60, help="training steps per run")
    p.add_argument("--log-every", type=int, default=5, help="steps per tokens/s record")
    p.add_argument("--rounds", type=int, default=3, help="alternated runs per configuration")
    p.add_argument("--reps", type=int, default=50, help="timed allreduces")
    p.add_argument("--latency-us", type=float, default=20.0, help="network latency (projection)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--write", action="store_true", help="write the section of RESULTS.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shapes = args.shape or ["cpu-small", "guppy"]
    if args.worker == "allreduce":
        allreduce_worker(shapes[0], args.reps)
        return 0
    load0 = load_average()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        data = corpus(Path(tmp))
        for shape in shapes:
            configs = {
                "1 process": (1, None, []),
                "1 process, 1 thread": (1, 1, []),
                f"mpiexec -n {args.ranks}": (args.ranks, None, []),
                f"mpiexec -n {args.ranks} --zero1": (args.ranks, None, ["--zero1"]),
            }
            runs: dict[str, list[dict]] = {k: [] for k in configs}
            for rnd in range(args.rounds):
                order = list(configs)
                order = order[rnd % len(order) :] + order[: rnd % len(order)]
                for label in order:
                    ranks, threads, flags = configs[label]
                    log(f"{shape}: round {rnd + 1}, {label}")
                    runs[label].append(train_run(shape, ranks, threads, flags, data, args))
            ar = time_allreduce(shape, args.ranks, args)
            sections.append(shape_report(shape, runs, ar, args.ranks, args))
    head = [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {cpu_isa()}. "
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Command: `{command_line('mpi_scaling.py', argv)}`",
        f"Load average (1 min) at start {load0:.2f}, at end {load_average():.2f}. "
        f"{args.rounds} round(s) of {args.steps} steps per configuration; MPI: the mpich "
        "wheel's mpiexec (shared memory between the ranks of one machine).",
        "",
    ]
    body = "\n".join(head) + "\n" + "\n\n".join(sections) + "\n"
    print(body)
    if args.write:
        write_section("MPI data-parallel scaling", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
