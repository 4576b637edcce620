"""Cold start: the first training step and the first decode step of a fresh process whose
Numba cache is empty, beside the same in a process that finds the cache warm.

Each round makes an empty cache folder and points NUMBA_CACHE_DIR at it (so nothing of
the source tree's own cache is used; npllm/kernels/__init__.py drops that cache when the
kernel sources change, which a user meets as a cold start too), then runs a cold process
and a warm one against it. A process imports npllm, builds the model (cpu-small or
guppy), and times its first training step (forward, backward, clip, AdamW), a second
one, its first decode call (`generate`, 8 greedy tokens with the KV cache, which
compiles the decode kernels) and a second one; and counts the Numba functions it
compiled rather than loaded.

    python benchmarks/cold_start.py                    # cpu-small, 1 round (~30-60 s)
    python benchmarks/cold_start.py --shape guppy --rounds 2 --write
    python benchmarks/kernels.py --jit                 # appends the same table
"""

from __future__ import annotations

import argparse
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
    run_worker,
    write_section,
)


def compiled_count() -> int:
    """Numba functions compiled (not loaded from the cache) so far in this process."""
    import gc

    import numba

    total = 0
    for obj in gc.get_objects():
        if isinstance(obj, numba.core.registry.CPUDispatcher):
            total += sum(obj.stats.cache_misses.values())
    return total


def cold_worker(spec: dict) -> dict:
    t0 = time.perf_counter()
    import numpy as np

    import npllm  # noqa: F401
    from benchmarks.train_step import model_config, shape_config
    from npllm.decoder import Decoder
    from npllm.generate import generate
    from npllm.gpt import GPT, GPTConfig
    from npllm.optim import clip_grad_norm

    t_import = time.perf_counter() - t0
    config = shape_config(spec["shape"])
    model = GPT(GPTConfig(**model_config(config)), seed=0)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    params = model.parameters()
    B, T, V = config["batch_size"], config["block_size"], config["vocab_size"]
    data = np.random.default_rng(0).integers(0, V, size=(B, T + 1))

    def step():
        _, loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(params, 1.0)
        opt.step()

    def decode():
        generate(Decoder.from_model(model), np.array([0]), 8, greedy=True)

    out = {"import_s": t_import}
    for name, fn in (("step", step), ("decode", decode)):
        for which in ("first", "second"):
            t0 = time.perf_counter()
            fn()
            out[f"{which}_{name}_s"] = time.perf_counter() - t0
        out[f"compiled_after_{name}"] = compiled_count()
    return {"samples": {k: [v] for k, v in out.items()}}


WORKERS = {"cold": cold_worker}


def cold_start_table(rounds: int = 1, shape: str = "cpu-small") -> list[str]:
    """Markdown rows: cold and warm process, `rounds` each (a fresh empty cache a round)."""
    script = Path(__file__)
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as cache:
            for label in ("cold", "warm"):  # cold must come first: it fills the cache
                job = Job(
                    label,
                    "cold",
                    {"framework": "npllm", "shape": shape},
                    env={"NUMBA_CACHE_DIR": cache, "NPLLM_WARM": "1"},  # the default
                )
                [res] = alternate(script, [job], 1)[label]
                runs[label].append(res)
    rows = [
        f"{shape}, each process fresh; NUMBA_CACHE_DIR an empty folder for the cold one, "
        "the same folder (now filled) for the warm one; seconds, median over "
        f"{rounds} round(s) (range):",
        "",
        "| process | import npllm | first training step | second step | first decode "
        "(8 tokens) | second decode | Numba functions compiled by the end of the first step / "
        "of the decodes |",
        "|---|---|---|---|---|---|---|",
    ]
    import statistics

    for label, rs in runs.items():

        def col(key: str, rs=rs) -> str:
            xs = [r["samples"][key][0] for r in rs]
            med = statistics.median(xs)
            return f"{med:.2f}" + (f" ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else "")

        compiled = [rs[0]["samples"][f"compiled_after_{k}"][0] for k in ("step", "decode")]
        rows.append(
            f"| {label} | {col('import_s')} | {col('first_step_s')} | {col('second_step_s')} | "
            f"{col('first_decode_s')} | {col('second_decode_s')} | "
            f"{compiled[0]:.0f} / {compiled[1]:.0f} |"
        )
    return rows, runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--worker":
        return run_worker(argv, WORKERS)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["cpu-small", "guppy", "tiny"], default="cpu-small")
    ap.add_argument("--rounds", type=int, default=1, help="cold + warm pairs (each cold ~30 s)")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    load0 = load_average()
    log(f"== cold start, {args.shape}")
    rows, runs = cold_start_table(args.rounds, args.shape)
    head = header(runs, (load0, load_average()), command_line("cold_start.py", argv))
    text = head + "\n" + "\n".join(rows) + "\n"
    print(text)
    if args.write or args.results:
        write_section("Cold start", text, *([args.results] if args.results else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
