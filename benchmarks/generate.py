"""Decoding speed at batch 1: npllm's KV-cache `generate` beside PyTorch eager with its own
KV cache, each in its own processes with its own default settings (torch at its default
thread count and OpenMP's default, active, waiting); the cache against recomputing the
context; and the int8-quantized model (weight bytes and decode speed).

A first npllm process writes the random initial weights of the shape (the training-step
benchmark's cpu-small and guppy) to a temporary .npz; then npllm and torch processes
alternate, rotating who goes first. In each, every run generates `block_size - 1` tokens
greedily after a one-token prompt (so the cache fills its whole window and never crops);
after one warm-up call of each run, `--samples` calls of each are timed, interleaved. The
greedy ids of npllm and torch (separate processes, same weights) are compared: speed is
never bought with a different answer.

    python benchmarks/generate.py                      # both shapes
    python benchmarks/generate.py --shape guppy --rounds 5
    python benchmarks/generate.py --run RUN --write    # + int8 val loss of a trained run;
                                                       # update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

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
    section_heading,
    stats,
    write_section,
)
from benchmarks.train_step import SHAPES, load, model_config, prepare  # noqa: E402

TORCH_KV = "PyTorch eager, KV cache"
NPLLM_KV = "npllm, KV cache"


# ---- the torch side ----------------------------------------------------------------------
def torch_kv_model(c, sd: dict):
    """A nanoGPT-shaped torch model with a preallocated KV cache, eager, inference only:
    the baseline a PyTorch user would write. `step(idx, start)` runs positions
    [start, start + T) and returns the last position's logits (B, V)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    W = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    nh, C = c.n_head, c.n_embd
    hs = C // nh
    act = {"gelu": lambda x: F.gelu(x, approximate="tanh"), "gelu_exact": F.gelu, "relu": F.relu}[
        c.activation
    ]

    class KVModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.k = [torch.zeros(1, nh, c.block_size, hs) for _ in range(c.n_layer)]
            self.v = [torch.zeros(1, nh, c.block_size, hs) for _ in range(c.n_layer)]

        def ln(self, x, name):
            return F.layer_norm(x, (C,), W[name + ".weight"], W.get(name + ".bias"), 1e-5)

        def lin(self, x, name):
            return F.linear(x, W[name + ".weight"], W.get(name + ".bias"))

        @torch.inference_mode()
        def step(self, idx, start: int):
            B, T = idx.shape
            pos = torch.arange(start, start + T)
            x = W["transformer.wte.weight"][idx] + W["transformer.wpe.weight"][pos]
            for i in range(c.n_layer):
                p = f"transformer.h.{i}."
                q, k, v = self.lin(self.ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
                q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
                self.k[i][:, :, start : start + T] = k.view(B, T, nh, hs).transpose(1, 2)
                self.v[i][:, :, start : start + T] = v.view(B, T, nh, hs).transpose(1, 2)
                K, V = self.k[i][:, :, : start + T], self.v[i][:, :, : start + T]
                att = (q @ K.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, S)
                if T > 1:
                    mask = torch.ones(T, start + T, dtype=torch.bool).tril(start)
                    att = att.masked_fill(~mask, float("-inf"))
                y = (att.softmax(-1) @ V).transpose(1, 2).reshape(B, T, C)
                x = x + self.lin(y, p + "attn.c_proj")
                h = act(self.lin(self.ln(x, p + "ln_2"), p + "mlp.c_fc"))
                x = x + self.lin(h, p + "mlp.c_proj")
            x = self.ln(x[:, -1], "transformer.ln_f")
            return x @ W["transformer.wte.weight"].T  # (B, V), tied lm_head

    return KVModel()


def torch_llama_kv_model(config: dict, weights: dict):
    """transformers' LlamaForCausalLM with its own KV cache (DynamicCache), eager, inference
    only, behind the same `step(idx, start)` as torch_kv_model."""
    import torch

    from benchmarks.train_step import torch_llama

    model = torch_llama(model_config(config), weights).eval()

    class HFKV:
        cache = None

        @torch.inference_mode()
        def step(self, idx, start):
            if start == 0:
                self.cache = None  # a new sequence (or, without the cache, the whole one)
            out = model(input_ids=idx, past_key_values=self.cache, use_cache=True)
            self.cache = out.past_key_values
            return out.logits[:, -1]

    return HFKV()


def torch_generate(model, n: int, use_cache: bool = True) -> list[int]:
    """Greedy decoding after the prompt [0], batch 1: with the cache one position per
    step, else the whole context every step."""
    import torch

    ids = torch.zeros(1, 1, dtype=torch.int64)
    logits = model.step(ids, 0)
    out = []
    for _ in range(n):
        nxt = logits.argmax(-1, keepdim=True)  # (1, 1)
        out.append(int(nxt))
        ids = torch.cat([ids, nxt], dim=1)
        logits = model.step(nxt, ids.shape[1] - 1) if use_cache else model.step(ids, 0)
    return out


# ---- the npllm side ----------------------------------------------------------------------
def npllm_runs(config: dict, weights: dict, recompute: bool) -> tuple[dict, dict]:
    """name -> function returning the greedy ids; and facts about the decoders."""
    import numpy as np

    from npllm.decoder import Decoder
    from npllm.generate import generate
    from npllm.gpt import GPTConfig
    from npllm.quant import load_weights, quantize_state_dict, weight_bytes

    try:  # where the decode kernels live has moved once; the forced runs are optional
        from npllm.decode import PARALLEL, SERIAL
    except ImportError:
        try:
            from npllm.kernels.decode import PARALLEL, SERIAL
        except ImportError:
            PARALLEL = SERIAL = None
    cfg = GPTConfig(**model_config(config))
    weights_f = load_weights(weights)
    weights_q = load_weights(quantize_state_dict(weights, embedding=True))
    dec, qdec = Decoder(cfg, weights_f), Decoder(cfg, weights_q)
    prompt, n = np.array([0]), cfg.block_size - 1

    def run(d, **kw):
        return lambda: generate(d, prompt, n, greedy=True, **kw)[0].tolist()

    runs = {NPLLM_KV: run(dec)}
    if SERIAL is not None:
        for label, par_min in (("serial", SERIAL), ("parallel", PARALLEL)):
            forced = Decoder(cfg, weights_f)
            forced.par_min = par_min
            runs[f"npllm, KV cache, {label} products"] = run(forced)
    if recompute:
        runs["npllm, recompute"] = run(dec, use_cache=False)
    runs["npllm int8, KV cache"] = run(qdec)

    def facts() -> dict:
        def choice(d) -> str:
            if SERIAL is None:
                return "(not reported)"
            if d.par_min is None:
                return "serial (no product is big enough for the parallel path)"
            return "parallel" if d.par_min == PARALLEL else "serial"

        return {
            "products": choice(dec),
            "products_int8": choice(qdec),
            "bytes": {
                "linear_f": weight_bytes(weights_f, linear_only=True),
                "linear_q": weight_bytes(weights_q, True),
                "all_f": weight_bytes(weights_f),
                "all_q": weight_bytes(weights_q),
            },
        }

    return runs, facts


def decode_worker(spec: dict) -> dict:
    fw = spec["framework"]
    if fw == "torch":
        import torch  # noqa: F401  (this process never loads npllm)
    else:
        import npllm  # noqa: F401
    meta, weights, _, _ = load(spec["dir"], spec["shape"])
    config = meta["config"]
    n = config["block_size"] - 1
    if fw == "torch":
        if config.get("pos_embedding") == "rope":
            tmodel = torch_llama_kv_model(config, weights)
        else:
            tmodel = torch_kv_model(SimpleNamespace(**config), weights)
        runs = {TORCH_KV: lambda: torch_generate(tmodel, n)}
        if spec["recompute"]:
            runs["PyTorch eager, recompute"] = lambda: torch_generate(tmodel, n, use_cache=False)
        facts = dict
    else:
        runs, facts = npllm_runs(config, weights, spec["recompute"])
    # The cached runs are warmed up and timed interleaved; the recompute runs (slow: ~1.4 s
    # a call at guppy) after them, since between them they disturbed the cached decoders'
    # own timing of serial against parallel products (int8 guppy: 909 instead of 2,225 tok/s).
    groups = [[n for n in runs if "recompute" not in n], [n for n in runs if "recompute" in n]]
    ids: dict[str, list[int]] = {}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for names in groups:
        ids.update({name: runs[name]() for name in names})  # warm-up: compiles, caches fill
        for r in range(spec["samples"] if names else 0):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                got = runs[name]()
                samples[name].append(time.perf_counter() - t0)
                if got != ids[name]:
                    raise RuntimeError(f"{name}: greedy ids changed between calls")
    return {"samples": samples, "ids": ids, "tokens": n, "facts": facts()}


def int8_val_worker(spec: dict) -> dict:
    """Val loss of a trained run's best checkpoint in float32 and int8, same batches."""
    import npllm  # noqa: F401
    from npllm.checkpoint import load_checkpoint
    from npllm.commands.quantize import val_loss
    from npllm.data import load_split
    from npllm.decoder import Decoder
    from npllm.gpt import GPTConfig
    from npllm.quant import load_weights, quantize_state_dict, weight_bytes

    run, eval_iters = spec["run"], spec["eval_iters"]
    ck = load_checkpoint(run, "best")
    cfg = GPTConfig(**ck.info["model_config"])
    val = load_split(ck.info["data"]["dir"], "val")
    lines = [
        f"### int8 on a trained model: {run} (iter {ck.info.get('iter')}, "
        f"{cfg.n_layer} layers, C={cfg.n_embd}, V={cfg.vocab_size}), "
        f"val loss over {eval_iters} batches of 8",
        "",
        "| weights | bytes | val loss | change |",
        "|---|---|---|---|",
    ]
    wf = load_weights(ck.model_state)
    base = val_loss(Decoder(cfg, wf), val, eval_iters, 8, 0)
    lines.append(f"| float32 | {weight_bytes(wf) / 1e6:.2f} MB | {base:.4f} | |")
    for emb in (False, True):
        wq = load_weights(quantize_state_dict(ck.model_state, embedding=emb))
        loss = val_loss(Decoder(cfg, wq), val, eval_iters, 8, 0)
        what = "int8 Linears + embedding" if emb else "int8 Linears, float embedding"
        lines.append(
            f"| {what} | {weight_bytes(wq) / 1e6:.2f} MB | {loss:.4f} | {loss - base:+.4f} |"
        )
    return {"samples": {}, "text": "\n".join(lines) + "\n"}


WORKERS = {"prepare": prepare, "decode": decode_worker, "int8_val": int8_val_worker}


# ---- the parent --------------------------------------------------------------------------
def report(shape: str, meta: dict, results: dict[str, list[dict]]) -> tuple[str, bool]:
    """The shape's markdown and whether npllm's and torch's greedy ids agree."""
    import statistics

    c = meta["config"]
    npl, tch = results["npllm"], results["torch"]
    n = npl[0]["tokens"]
    rows = {}
    for runs in (npl, tch):
        for name in runs[0]["samples"]:
            rows[name] = stats(runs, name).map(lambda t: n / t)
    ref = rows[TORCH_KV]
    ids = {name: r["ids"][name] for runs in (npl, tch) for r in runs for name in r["ids"]}
    same_kv = all(a["ids"][NPLLM_KV] == b["ids"][TORCH_KV] for a in npl for b in tch)
    cached_same = all(
        r["ids"].get("npllm, recompute", r["ids"][NPLLM_KV]) == r["ids"][NPLLM_KV] for r in npl
    )
    q, f = ids["npllm int8, KV cache"], ids[NPLLM_KV]
    agree_q = sum(a == b for a, b in zip(q, f)) / len(f)
    facts = npl[0]["facts"]
    b = facts["bytes"]
    lines = [
        f"### {shape}: V={c['vocab_size']} L={c['n_layer']} nh={c['n_head']} C={c['n_embd']} "
        f"block={c['block_size']} {c['activation']}, batch 1, {n} greedy tokens a call; "
        f"{len(npl)} rounds, each process 1 warm-up + {len(npl[0]['samples'][NPLLM_KV])} "
        "timed calls of each run",
        "",
        "| run | tokens/s: median (runs min-max; IQR of all) | vs PyTorch eager + KV cache |",
        "|---|---|---|",
        *[f"| {k} | {v.fmt(1, 0)} | {v.median / ref.median:.2f}x |" for k, v in rows.items()],
        "",
        f"- npllm/PyTorch, KV cache, tokens/s: **{ratio(rows[NPLLM_KV], ref)}**.",
        f"- Products of npllm's decoder (serial or parallel, chosen by timing both in its "
        f"first decode steps): {facts['products']}; int8: {facts['products_int8']}.",
    ]
    if "npllm, recompute" in rows and "PyTorch eager, recompute" in rows:
        lines.append(
            f"- KV cache over recomputation: npllm "
            f"{rows[NPLLM_KV].median / rows['npllm, recompute'].median:.1f}x, PyTorch "
            f"{ref.median / rows['PyTorch eager, recompute'].median:.1f}x."
        )
    lines += [
        f"- Greedy ids of npllm and torch (separate processes) identical: {same_kv}; npllm "
        f"cached = recompute: {cached_same}; int8 agrees with float on {agree_q:.0%} of them.",
        f"- int8 (Linears + tied embedding): Linear weights {b['linear_f'] / 1e6:.2f} MB -> "
        f"{b['linear_q'] / 1e6:.2f} MB ({b['linear_f'] / b['linear_q']:.2f}x smaller); all "
        f"weights {b['all_f'] / 1e6:.2f} MB -> {b['all_q'] / 1e6:.2f} MB "
        f"({b['all_f'] / b['all_q']:.2f}x); peak RSS npllm "
        f"{statistics.median(r['info']['peak_rss_mb'] for r in npl):.0f} MB, torch "
        f"{statistics.median(r['info']['peak_rss_mb'] for r in tch):.0f} MB.",
    ]
    if not same_kv:
        lines.append("\n**IDS DIFFER**: npllm's and torch's greedy ids are not the same.")
    return "\n".join(lines) + "\n", same_kv and cached_same


def measure(shape: str, args, folder: str):
    script = Path(__file__)
    prep = Job(
        "prepare", "prepare", {"framework": "npllm", "shape": shape, "dir": folder, "n_batches": 1}
    )
    meta = alternate(script, [prep], 1, echo=lambda _: None)["prepare"][0]
    spec = {
        "shape": shape,
        "dir": folder,
        "samples": args.samples,
        "recompute": not args.no_recompute,
    }
    jobs = [Job(fw, "decode", {"framework": fw, **spec}) for fw in ("npllm", "torch")]
    return meta, alternate(script, jobs, args.rounds)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--worker":
        return run_worker(argv, WORKERS)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shape",
        choices=[*SHAPES, "all"],
        default="all",
        help="model shape (all: cpu-small and guppy)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="processes per framework")
    ap.add_argument("--samples", type=int, default=5, help="timed calls of each run a process")
    ap.add_argument(
        "--no-recompute", action="store_true", help="skip the runs without KV cache (slow at guppy)"
    )
    ap.add_argument("--run", help="a trained run folder: also compare its val loss in int8")
    ap.add_argument("--eval-iters", type=int, default=50, help="val batches for --run")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shapes = ["cpu-small", "guppy"] if args.shape == "all" else [args.shape]
    load0 = load_average()
    parts, ok, everything = [], True, {}
    with tempfile.TemporaryDirectory() as folder:
        for shape in shapes:
            log(f"== {shape}")
            meta, results = measure(shape, args, folder)
            text, same = report(shape, meta, results)
            print(text, flush=True)
            parts.append(text)
            ok &= same
            for label, runs in results.items():
                everything.setdefault(label, []).extend(runs)
    if args.run:
        job = Job(
            "int8",
            "int8_val",
            {"framework": "npllm", "run": args.run, "eval_iters": args.eval_iters},
        )
        parts.append(alternate(Path(__file__), [job], 1)["int8"][0]["text"])
        print(parts[-1], flush=True)
    head = header(
        everything,
        (load0, load_average()),
        command_line("generate.py", argv),
        "Each framework in its own processes with its own defaults, alternating; "
        "tokens/s medians over all timed calls of all processes.",
    )
    print(head)
    if args.write or args.results:
        write_section(
            section_heading("Generation", shapes),
            head + "\n" + "\n".join(parts),
            *([args.results] if args.results else []),
        )
    if not ok:
        print(
            "GREEDY IDS DIFFER between npllm and torch, or between npllm's cached and "
            "recomputed runs"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
