"""Decoding at batch 1 beside llama.cpp: the same random weights run by npllm (float32 and
int8, `npllm.decoder.Decoder`) and by llama.cpp through llama-cpp-python (GGUF F32 and
Q8_0, written by `npllm export`'s writer), each in processes of its own, alternating, with
the same thread count (the machine's cores: npllm's Numba pool by default, llama.cpp's
n_threads and n_threads_batch set to it). Prompt processing (one call over the prompt)
and generation (one token per call, greedy, from that prompt) are timed separately.

Shapes: `guppy` is GuppyLM's (6 layers, C=384, hidden 768, block 128, vocab 4096) with a
GELU MLP, since llama.cpp's gpt2 graph only computes GELU; `gpt2-124m` is GPT-2 small's
(12 layers, C=768, block 1024, vocab 50257). The GGUF tokenizer is the 256 bytes and one
merge, padded to the vocabulary (the weights are random: no text is involved).

On CPUs with AMX, llama-cpp-python 0.3.36 crashes in batched Q8_0 prompt processing
inside its repacked (AMX) weight buffers. There the Q8_0 row loads the model with
`use_extra_bufts=False` (ggml's plain CPU kernels), and one more row, "llama.cpp Q8_0,
repacked", keeps llama.cpp's default buffers and feeds the prompt one token per call (its
prompt figure is then token-by-token, and marked so); the report says which is which.

    python benchmarks/llama_cpp_decode.py                     # both shapes, 3 rounds
    python benchmarks/llama_cpp_decode.py --shape guppy --rounds 5 --write
"""

from __future__ import annotations

import argparse
import json
import os
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
    cpu_isa,
    header,
    load_average,
    log,
    run_worker,
    stats,
    write_section,
)

SHAPES = {
    "guppy": dict(vocab_size=4096, block_size=128, n_layer=6, n_head=6, n_embd=384, mlp_hidden=768),
    "gpt2-124m": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "tiny": dict(vocab_size=300, block_size=32, n_layer=1, n_head=2, n_embd=32),  # tests
}
# prompt tokens and generated tokens per call
LENGTHS = {"guppy": (64, 63), "gpt2-124m": (128, 128), "tiny": (8, 8)}
REPACKED = "llama.cpp Q8_0, repacked"  # AMX CPUs only: see the module docstring
RUNS = {
    "npllm float32": ("npllm", "f32"),
    "npllm int8": ("npllm", "int8"),
    "llama.cpp F32": ("llama.cpp", "f32"),
    "llama.cpp Q8_0": ("llama.cpp", "q8_0"),
}


def prepare(spec: dict) -> dict:
    """npllm process: random weights of the shape as .npz and as GGUF files of the types in
    spec["gguf"] (F32 and Q8_0 unless said)."""
    import dataclasses

    import numpy as np

    from npllm.export.gguf import write_gguf
    from npllm.gpt import GPT, GPTConfig
    from npllm.tokenizers import BPETokenizer

    config = GPTConfig(**SHAPES[spec["shape"]], activation="gelu")
    model = GPT(config, seed=0)
    sd = model.state_dict()
    folder = Path(spec["dir"])
    np.savez(folder / "weights.npz", **sd)
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    for q in spec.get("gguf", ("f32", "q8_0")):
        write_gguf(config, sd, BPETokenizer([(116, 104)]), folder / f"{q}.gguf", q)
    P, n = LENGTHS[spec["shape"]]
    prompt = np.random.default_rng(0).integers(0, 256, P).tolist()
    return {"samples": {}, "prompt": prompt, "n": n, "params": model.num_params(False)}


def npllm_worker(spec: dict) -> dict:
    import numpy as np

    import npllm  # noqa: F401
    from npllm.decoder import Decoder
    from npllm.gpt import GPTConfig
    from npllm.quant import load_weights, quantize_state_dict

    folder = Path(spec["dir"])
    config = GPTConfig(**json.loads((folder / "config.json").read_text()))
    with np.load(folder / "weights.npz") as z:
        sd = {k: z[k] for k in z.files}
    if spec["weights"] == "int8":
        sd = quantize_state_dict(sd, embedding=True)
    return decode_timed(Decoder(config, load_weights(sd)), spec)


def decode_timed(dec, spec: dict) -> dict:
    """`timed` over one call of `dec`: the prompt in one forward, then spec["n"] greedy
    tokens one per forward, with their ids."""
    import numpy as np

    prompt = np.array([spec["prompt"]])

    def call() -> tuple[float, float, list[int]]:
        cache = dec.new_cache(1)
        t0 = time.perf_counter()
        logits = dec.forward(prompt, cache, last_only=True)  # (1, V)
        t1 = time.perf_counter()
        ids = []
        for _ in range(spec["n"]):
            token = int(np.argmax(logits[0]))
            ids.append(token)
            logits = dec.forward(np.array([[token]]), cache, last_only=True)
        return t1 - t0, time.perf_counter() - t1, ids

    return timed(call, spec)


def llama_cpp_worker(spec: dict) -> dict:
    import llama_cpp.llama_cpp as low
    import numpy as np
    from llama_cpp import Llama

    threads = os.cpu_count() or 1
    amx_q8 = spec["weights"] in ("q8_0", "q4_0") and "AMX" in cpu_isa()  # Q4_0 crashes too
    plain = amx_q8 and not spec.get("repacked")
    one_by_one = bool(amx_q8 and spec.get("repacked"))  # a batched prompt would crash
    if plain:  # see the module docstring: the AMX repack path crashes in Q8_0 prefill
        default_params = low.llama_model_default_params

        def params():
            p = default_params()
            p.use_extra_bufts = False
            return p

        low.llama_model_default_params = params
    llm = Llama(
        str(Path(spec["dir"]) / f"{spec['weights']}.gguf"),
        n_ctx=spec["block_size"],
        n_batch=len(spec["prompt"]),
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    prompt, V = spec["prompt"], llm.n_vocab()

    def last_logits() -> np.ndarray:  # the logits llama.cpp computed for the last token
        return np.ctypeslib.as_array(low.llama_get_logits_ith(llm.ctx, -1), shape=(V,))

    def call() -> tuple[float, float, list[int]]:
        llm.reset()
        t0 = time.perf_counter()
        for chunk in [[t] for t in prompt] if one_by_one else [prompt]:
            llm.eval(chunk)
        t1 = time.perf_counter()
        ids = []
        for _ in range(spec["n"]):
            token = int(np.argmax(last_logits()))
            ids.append(token)
            llm.eval([token])
        return t1 - t0, time.perf_counter() - t1, ids

    out = timed(call, spec)
    out["facts"] = {"threads": threads, "use_extra_bufts": not plain, "one_by_one": one_by_one}
    return out


def timed(call, spec: dict) -> dict:
    """One warm-up call, then `samples` timed ones: prompt and generation seconds."""
    _, _, ids = call()
    prefill, decode = [], []
    for _ in range(spec["samples"]):
        a, b, got = call()
        if got != ids:
            raise RuntimeError("greedy ids changed between calls")
        prefill.append(a)
        decode.append(b)
    return {"samples": {"prefill": prefill, "decode": decode}, "ids": ids}


WORKERS = {"prepare": prepare, "npllm": npllm_worker, "llama.cpp": llama_cpp_worker}


def measure(
    shape: str,
    args,
    folder: str,
    cache: str,
    script: Path = Path(__file__),
    runs: dict[str, tuple[str, str]] = RUNS,
    gguf: tuple[str, ...] = ("f32", "q8_0"),
    repacked: tuple[str, ...] = ("q8_0",),
) -> tuple[dict, dict[str, list[dict]]]:
    """Prepare the weights (GGUF types `gguf`), then time `runs` (label -> (worker,
    weights)) in `script`'s workers, alternating; on AMX CPUs also llama.cpp's repacked
    buffers for the types in `repacked` (see the module docstring)."""
    spec = {"framework": "npllm", "shape": shape, "dir": folder, "gguf": list(gguf)}
    meta = alternate(script, [Job("prepare", "prepare", spec)], 1, echo=lambda _: None)
    meta = meta["prepare"][0]
    base = {
        "dir": folder,
        "prompt": meta["prompt"],
        "n": meta["n"],
        "samples": args.samples,
        "block_size": SHAPES[shape]["block_size"],
    }
    # Each npllm run keeps its own Numba cache: with the float32 and the int8 decode step
    # both cached in one folder, loading them crashed (numba 0.6x, seen 2026-11-25).
    jobs = [
        Job(
            label,
            fw,
            {**base, "framework": fw, "weights": w},
            {"NUMBA_CACHE_DIR": str(Path(cache) / w)} if fw == "npllm" else {},
        )
        for label, (fw, w) in runs.items()
    ]
    if "AMX" in cpu_isa():
        for w in repacked:
            spec = {**base, "framework": "llama.cpp", "weights": w, "repacked": True}
            jobs.append(Job(f"llama.cpp {w.upper()}, repacked", "llama.cpp", spec))
    return meta, alternate(script, jobs, args.rounds)


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
    ref = {"npllm float32": "llama.cpp F32", "npllm int8": "llama.cpp Q8_0"}
    lines = [
        f"### {shape}: V={c['vocab_size']} L={c['n_layer']} nh={c['n_head']} "
        f"C={c['n_embd']} block={c['block_size']} gelu ({meta['params'] / 1e6:.1f}M "
        f"parameters), batch 1, prompt {P} tokens then {n} greedy tokens one per call",
        "",
        "| run | prompt tokens/s | generation tokens/s | generation vs llama.cpp |",
        "|---|---|---|---|",
    ]
    for label, (pp, tg) in rows.items():
        other = rows.get(ref.get(label, ""), (None, None))[1]
        vs = f"{tg.median / other.median:.2f}x" if other is not None else ""
        by_one = results[label][0].get("facts", {}).get("one_by_one")
        mark = " (one token per call)" if by_one else ""
        lines.append(f"| {label} | {pp.fmt(1, 0)}{mark} | {tg.fmt(1, 0)} | {vs} |")
    ids = {label: runs[0]["ids"] for label, runs in results.items()}
    same = sum(a == b for a, b in zip(ids["npllm float32"], ids["llama.cpp F32"]))
    facts = results["llama.cpp Q8_0"][0]["facts"]
    lines += [
        "",
        f"- Greedy ids, npllm float32 vs llama.cpp F32 (same weights, separate processes): "
        f"{same}/{n} equal.",
        f"- llama.cpp threads {facts['threads']} (n_threads and n_threads_batch); Q8_0 "
        + (
            "with its default (repacked) weight buffers."
            if facts["use_extra_bufts"]
            else "loaded with use_extra_bufts=False (AMX CPU: the repacked path crashes in "
            f"batched prompt processing); `{REPACKED}` keeps the default buffers and feeds "
            "the prompt one token per call."
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--worker":
        return run_worker(argv, WORKERS)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--rounds", type=int, default=3, help="processes per run")
    ap.add_argument("--samples", type=int, default=5, help="timed calls a process")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shapes = ["guppy", "gpt2-124m"] if args.shape == "all" else [args.shape]
    load0 = load_average()
    parts, everything = [], {}
    cache = tempfile.TemporaryDirectory(prefix="npllm-numba-")
    for shape in shapes:
        log(f"== {shape}")
        with tempfile.TemporaryDirectory() as folder:
            meta, results = measure(shape, args, folder, cache.name)
        text = report(shape, meta, results)
        print(text, flush=True)
        parts.append(text)
        for label, runs in results.items():
            everything.setdefault(label, []).extend(runs)
    cache.cleanup()
    head = header(
        everything,
        (load0, load_average()),
        command_line("llama_cpp_decode.py", argv),
        "Each run in its own processes, alternating; tokens/s medians over all timed calls.",
    )
    print(head)
    if args.write or args.results:
        write_section(
            "Decoding beside llama.cpp",
            head + "\n" + "\n".join(parts),
            *([args.results] if args.results else []),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
