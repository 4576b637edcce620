"""Constrained decoding: what a JSON schema costs. Decode tokens/s at `guppy` shape with a
byte-level BPE of 4,096 tokens trained on tinyshakespeare, without and with a JSON
schema; the per-token cost of the mask and the state advance alone; and the one-time
compile cost of a schema (regex/automaton + vocabulary walk) of 20 properties.

Decoding: batch 1, a one-token prompt, sampling at temperature 1 (both runs go through
`npllm.sampling.process_logits` and the same draw), random weights. The constrained run
stops once its JSON is complete, so tokens/s counts the tokens it produced; the budget is
`block_size - 1` tokens for both. Each kind runs in fresh processes, alternated A/B in
rounds (benchmarks/common.py), several generations per process after a warm-up; both take
the decoder's serial products.

    python benchmarks/constrained.py                       # 5 rounds
    python benchmarks/constrained.py --rounds 7 --write    # update benchmarks/RESULTS.md
Run it only under the shared lock: flock /tmp/npllm-cpu.lock python benchmarks/...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
    write_section,
)

CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
VOCAB = 4096

# The decoded schema: a record a chat model might be asked for; the prompt never helps
# (random weights), so the mask does all the work. Its strings are unbounded: random
# weights seldom close one, so outputs run to about the budget, as the unconstrained
# ones do, and both decode over the same range of positions.
DECODE_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "mood": {"enum": ["calm", "curious", "angry", "sleepy"]},
        "alive": {"type": "boolean"},
        "lines": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "score": {"type": "number"},
    },
    "required": ["name", "age", "mood", "alive", "lines"],
}


NOTE = """What is measured: tokens/s over whole `generate` calls (prefill of one token, 127
decode steps, sampling); the constrained calls add, per step, one row of the grammar's
precomputed (states x 4,096) mask table applied as -inf before sampling, and one state
advance (a binary search among the state's allowed tokens). "mask + advance alone"
replays the same ids through a fresh guide, without the model. Compile: the schema ->
NFA -> byte DFA (dead states pruned) -> the walk of the vocabulary's trie that gives
every state its allowed tokens and next states, and each state's fewest tokens to a
complete output. Targets: constrained >= 0.8x unconstrained, a 20-property schema
compiled in <= 1 s over 4,096 tokens."""


def compile_schema(n: int) -> dict:
    """n properties of every scalar kind, half of them required."""
    kinds = [
        {"type": "string"},
        {"type": "integer"},
        {"type": "number"},
        {"type": "boolean"},
        {"enum": ["red", "green", "blue"]},
        {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        {"type": "string", "maxLength": 16},
        {"type": ["string", "null"]},
    ]
    props = {f"field_{i:02d}": kinds[i % len(kinds)] for i in range(n)}
    return {"type": "object", "properties": props, "required": list(props)[::2]}


def tokenizer(spec: dict):
    from npllm.tokenizers import BPETokenizer

    t0 = time.perf_counter()
    tok = BPETokenizer.train(Path(spec["corpus"]).read_text(encoding="utf-8"), VOCAB)
    log(f"  BPE {VOCAB} trained in {time.perf_counter() - t0:.1f} s")
    return tok


# ---- workers -----------------------------------------------------------------------------
def decode_worker(spec: dict) -> dict:
    """Tokens/s of `spec["generations"]` sampled generations, constrained or not; for the
    constrained ones also the mask + advance time per token, replayed on the same ids."""
    import numpy as np

    from benchmarks.train_step import model_config, shape_config
    from npllm.constrain import schema_grammar
    from npllm.decoder import Decoder
    from npllm.generate import generate
    from npllm.gpt import GPT, GPTConfig

    try:  # the decode kernels may move under npllm.kernels
        from npllm.decode import SERIAL
    except ImportError:
        from npllm.kernels.decode import SERIAL

    tok = tokenizer(spec)
    cfg = GPTConfig(**model_config(shape_config("guppy")))
    assert cfg.vocab_size == tok.vocab_size == VOCAB
    dec = Decoder.from_model(GPT(cfg, seed=0))
    # both kinds take the same (serial) products: the decoder would otherwise pick serial
    # or parallel by timing its first steps, a choice that flips with the machine's load
    # (RESULTS.md, Generation) and is not what this benchmark compares
    dec.par_min = SERIAL
    grammar = schema_grammar(DECODE_SCHEMA, tok) if spec["constrained"] else None
    n = cfg.block_size - 1
    rates, step_us, lengths = [], [], []
    for k in range(spec["warmup"] + spec["generations"]):
        t0 = time.perf_counter()
        ids, _ = generate(dec, np.array([0]), n, temperature=1.0, seed=k, grammar=grammar)
        dt = time.perf_counter() - t0
        if k < spec["warmup"]:
            continue
        rates.append(len(ids) / dt)
        lengths.append(len(ids))
        if grammar is not None:
            guide = grammar.guide(1, n)
            logits = np.zeros((1, cfg.vocab_size), np.float32)
            t0 = time.perf_counter()
            for t in ids:
                np.where(guide.mask(), logits, np.float32(-np.inf))
                guide.advance(np.array([t]))
            step_us.append((time.perf_counter() - t0) / len(ids) * 1e6)
            assert guide.finished[0]
    samples = {"tok_s": rates, "length": lengths}
    if step_us:
        samples["step_us"] = step_us
    return {"samples": samples}


def compile_worker(spec: dict) -> dict:
    """Seconds to build the grammar of a schema of n properties over the vocabulary (fresh
    each time: DFA and vocabulary walk), and the any-JSON-object grammar."""
    from npllm.constrain import json_grammar, schema_grammar
    from npllm.constrain.schema import schema_dfa

    tok = tokenizer(spec)
    schema_dfa({"type": "null"})  # first-use imports out of the timing
    samples: dict[str, list[float]] = {}
    facts = {}
    for name, build in (
        ("schema20", lambda: schema_grammar(compile_schema(20), tok)),
        ("decode_schema", lambda: schema_grammar(DECODE_SCHEMA, tok)),
        ("json_object", lambda: json_grammar("object", tok)),
    ):
        times = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            g = build()
            times.append(time.perf_counter() - t0)
        samples[name] = times
        facts[name] = {"states": g.n_states, "edges": int(g.edge_tok.size), "min": g.min_tokens}
    return {"samples": samples, "facts": facts}


WORKERS = {"decode": decode_worker, "compile": compile_worker}


# ---- the report --------------------------------------------------------------------------
def report(results: dict, rounds: int) -> str:
    free, json_ = results["unconstrained"], results["JSON schema"]
    comp = results["compile"]
    tf, tj = stats(free, "tok_s"), stats(json_, "tok_s")
    step = stats(json_, "step_us")
    length = stats(json_, "length")
    facts = comp[0]["facts"]
    lines = [
        "| decode, guppy shape, BPE 4096, batch 1, temperature 1 | tokens/s: median "
        "(per-run medians; IQR) |",
        "|---|---|",
        f"| unconstrained, 127 tokens | {tf.fmt()} |",
        f"| JSON schema (6 properties; outputs of {min(length.all):.0f}-"
        f"{max(length.all):.0f} tokens) | {tj.fmt()} |",
        f"| ratio constrained / unconstrained | {ratio(tj, tf)} |",
        f"| mask + advance alone, per token | {step.fmt(digits=1)} µs |",
        "",
        "| one-time compile (DFA + vocabulary walk over 4,096 tokens) | seconds: median "
        "(per-run medians; IQR) | DFA states, (state, token) edges, fewest tokens |",
        "|---|---|---|",
    ]
    for key, label in (
        ("schema20", "schema of 20 properties (8 kinds, half required)"),
        ("decode_schema", "the decoded schema (6 properties)"),
        ("json_object", "any JSON object (json_object mode, depth <= 4)"),
    ):
        f = facts[key]
        lines.append(
            f"| {label} | {stats(comp, key).fmt(digits=3)} | "
            f"{f['states']:,}, {f['edges']:,}, {f['min']} |"
        )
    r, c20 = tj.median / tf.median, stats(comp, "schema20").median
    lines.append("")
    lines.append(
        f"Targets: constrained / unconstrained {r:.2f} (target >= 0.8: "
        f"{'met' if r >= 0.8 else 'NOT met'}); 20-property schema {c20:.2f} s (target <= 1 s: "
        f"{'met' if c20 <= 1 else 'NOT met'})."
    )
    lines.append(
        f"{rounds} rounds; each decode process: 2 warm-up + 5 timed generations; "
        "each compile process: 3 builds of each grammar."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return run_worker(argv, WORKERS)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of A/B processes (default 5)")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="text to train the BPE on")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if not args.corpus.exists():
        raise SystemExit(f"no corpus at {args.corpus}; pass --corpus FILE")
    base = {"corpus": str(args.corpus), "framework": "npllm"}
    decode = {**base, "warmup": 2, "generations": 5}
    jobs = [
        Job("unconstrained", "decode", {**decode, "constrained": False}),
        Job("JSON schema", "decode", {**decode, "constrained": True}),
        Job("compile", "compile", {**base, "repeats": 3}),
    ]
    load0 = load_average()
    results = alternate(Path(__file__), jobs, args.rounds)
    load1 = load_average()
    body = header(results, (load0, load1), command_line("constrained.py", argv), NOTE)
    body += "\n" + report(results, args.rounds) + "\n"
    print(body)
    if args.write:
        write_section("Structured output (constrained decoding)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
