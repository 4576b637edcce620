"""Quantized decoding at batch 1 beside llama.cpp: npllm int4 (group 32, symmetric: the
very blocks of llama.cpp's Q4_0) and int8 against llama.cpp Q4_0 and Q8_0, through
llama-cpp-python, on the same random weights, each run in processes of its own,
alternating, with the same thread count (the machine's cores). Prompt processing (one
call over the prompt) and generation (one token per call, greedy) are timed separately;
the harness, shapes and llama.cpp worker are benchmarks/llama_cpp_decode.py's.

npllm quantizes every block Linear and the tied embedding / lm_head: int4 here means
`--embedding-bits 4`, as a Q4_0 GGUF holds token_embd in Q4_0 too, so both sides read the
same bytes (npllm's default keeps that matrix in int8; the "int4, int8 embedding" row
shows what it costs). The Q4_0 file is `npllm export --quantize q4_0`'s writer, whose
blocks are npllm's int4 bytes; both round a decode step's activations to 8 bits per block
of 32 (npllm.kernels.int4), so their greedy ids differ only by the rounding's details
(llama.cpp keeps those scales in float16, npllm in float32) and the float sums' order.

On CPUs with AMX, llama-cpp-python 0.3.36 crashes in batched prompt processing of
repacked Q8_0 and Q4_0 weights: there those rows load with `use_extra_bufts=False`, and
"..., repacked" rows keep the default (repacked) buffers and feed the prompt one token a
call (llama_cpp_decode.py's docstring); npllm's generation is compared with those rows
(generation is one token a call anyway, and repacked weights are llama.cpp's default).

    python benchmarks/quant_decode.py                          # guppy, 3 rounds
    python benchmarks/quant_decode.py --rounds 5 --write       # + benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    command_line,
    header,
    load_average,
    log,
    run_worker,
    stats,
    write_section,
)
from benchmarks.llama_cpp_decode import (  # noqa: E402
    SHAPES,
    decode_timed,
    llama_cpp_worker,
    prepare,
)
from benchmarks.llama_cpp_decode import measure as decode_measure  # noqa: E402

# label -> (worker, weights)
RUNS = {
    "npllm int4": ("npllm", "int4"),
    "npllm int4, int8 embedding": ("npllm", "int4-emb8"),
    "npllm int8": ("npllm", "int8"),
    "llama.cpp Q4_0": ("llama.cpp", "q4_0"),
    "llama.cpp Q8_0": ("llama.cpp", "q8_0"),
}
VERSUS = {"npllm int4": "llama.cpp Q4_0", "npllm int8": "llama.cpp Q8_0"}


def npllm_worker(spec: dict) -> dict:
    import numpy as np

    import npllm  # noqa: F401
    from npllm.decoder import Decoder
    from npllm.gpt import GPTConfig
    from npllm.quant import load_weights, quantize_state_dict, weight_bytes

    folder = Path(spec["dir"])
    config = GPTConfig(**json.loads((folder / "config.json").read_text()))
    with np.load(folder / "weights.npz") as z:
        sd = {k: z[k] for k in z.files}
    kind = spec["weights"]
    if kind == "int8":
        sd = quantize_state_dict(sd)
    else:
        sd = quantize_state_dict(sd, bits=4, embedding_bits=8 if kind == "int4-emb8" else 4)
    weights = load_weights(sd)
    dec = Decoder(config, weights)
    out = decode_timed(dec, spec)
    out["facts"] = {"bytes": weight_bytes(weights), "par_min": dec.par_min}
    return out


WORKERS = {"prepare": prepare, "npllm": npllm_worker, "llama.cpp": llama_cpp_worker}


def measure(shape: str, args, folder: str, cache: str) -> tuple[dict, dict[str, list[dict]]]:
    """llama_cpp_decode's measurement with this script's runs and workers."""
    return decode_measure(
        shape, args, folder, cache, Path(__file__), RUNS, ("q8_0", "q4_0"), ("q4_0", "q8_0")
    )


def report(shape: str, meta: dict, results: dict[str, list[dict]]) -> str:
    c = SHAPES[shape]
    P, n = len(meta["prompt"]), meta["n"]
    rows = {
        label: (
            stats(runs, "prefill").map(lambda t: P / t),
            stats(runs, "decode").map(lambda t: n / t),
        )
        for label, runs in results.items()
    }
    lines = [
        f"### {shape}: V={c['vocab_size']} L={c['n_layer']} nh={c['n_head']} "
        f"C={c['n_embd']} block={c['block_size']} gelu ({meta['params'] / 1e6:.1f}M "
        f"parameters), batch 1, prompt {P} tokens then {n} greedy tokens one per call",
        "",
        "| run | weight bytes | prompt tokens/s | generation tokens/s | generation vs llama.cpp |",
        "|---|---|---|---|---|",
    ]
    for label, (pp, tg) in rows.items():
        # llama.cpp's default (repacked) buffers where a row has them: its generation is
        # token by token in both rows, and the repacked kernels are what users run
        ref = VERSUS.get(label, "")
        other = rows.get(f"{ref}, repacked", rows.get(ref, (None, None)))[1]
        vs = f"{tg.median / other.median:.2f}x" if other is not None else ""
        facts = results[label][0].get("facts", {})
        size = f"{facts['bytes'] / 1e6:.2f} MB" if "bytes" in facts else ""
        mark = " (one token per call)" if facts.get("one_by_one") else ""
        lines.append(f"| {label} | {size} | {pp.fmt(1, 0)}{mark} | {tg.fmt(1, 0)} | {vs} |")
    ids = {label: runs[0]["ids"] for label, runs in results.items()}
    same4 = sum(a == b for a, b in zip(ids["npllm int4"], ids["llama.cpp Q4_0"]))
    same8 = sum(a == b for a, b in zip(ids["npllm int8"], ids["llama.cpp Q8_0"]))
    plain = not results["llama.cpp Q4_0"][0]["facts"]["use_extra_bufts"]
    lines += [
        "",
        f"- Greedy ids (separate processes, same weights): npllm int4 vs llama.cpp Q4_0 "
        f"{same4}/{n} equal, npllm int8 vs llama.cpp Q8_0 {same8}/{n} (random weights: "
        "near-ties are common; llama.cpp rounds activations to 8 bits, as npllm int4 does "
        "in its decode steps and npllm int8 does not).",
        f"- Threads: {results['llama.cpp Q4_0'][0]['facts']['threads']} on both sides; "
        + (
            "llama.cpp's Q4_0/Q8_0 rows load with use_extra_bufts=False (AMX CPU: its "
            "repacked path crashes in batched prompt processing); the repacked rows keep "
            "the default buffers and feed the prompt one token per call."
            if plain
            else "llama.cpp with its default (repacked) weight buffers."
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--worker":
        return run_worker(argv, WORKERS)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="guppy")
    ap.add_argument("--rounds", type=int, default=3, help="processes per run")
    ap.add_argument("--samples", type=int, default=5, help="timed calls a process")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    load0 = load_average()
    log(f"== {args.shape}")
    with tempfile.TemporaryDirectory(prefix="npllm-numba-") as cache:
        with tempfile.TemporaryDirectory() as folder:
            meta, results = measure(args.shape, args, folder, cache)
    text = report(args.shape, meta, results)
    head = header(
        results,
        (load0, load_average()),
        command_line("quant_decode.py", argv),
        "Each run in its own processes, alternating; tokens/s medians over all timed calls.",
    )
    print(text + "\n" + head)
    if args.write or args.results:
        write_section(
            "Quantized decoding beside llama.cpp",
            head + "\n" + text,
            *([args.results] if args.results else []),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
