"""Decoding speed at batch 1: npllm's KV-cache `generate` beside PyTorch eager with its own
KV cache, on the same random weights, 2 threads each; the cache against recomputing the
context; and the int8-quantized model (weight bytes and decode speed).

Each measurement generates `block_size - 1` tokens greedily after a one-token prompt (so
the cache fills its whole window and never crops) and counts decode steps per second. The
runs are interleaved A/B in one process after warm-up, so machine noise hits all of them
alike; the medians of `--repeats` runs are reported. The greedy ids of npllm and torch are
compared: speed is never bought with a different answer.

    python benchmarks/generate.py                    # both shapes
    python benchmarks/generate.py --shape guppy --repeats 7
    python benchmarks/generate.py --run RUN --write  # + int8 val loss on a trained run;
                                                     # update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, write_section  # noqa: E402
from benchmarks.train_step import SHAPES, model_config  # noqa: E402


def torch_kv_model(config, sd: dict[str, np.ndarray]):
    """A nanoGPT-shaped torch model with a preallocated KV cache, eager, inference only:
    the baseline a PyTorch user would write. `step(idx, start)` runs positions
    [start, start + T) and returns the last position's logits (B, V)."""
    import torch
    import torch.nn.functional as F

    W = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    c = config
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


def torch_generate(model, prompt: np.ndarray, n: int, use_cache: bool = True) -> list[int]:
    """Greedy decoding, batch 1: with the cache one position per step, else the whole
    context every step."""
    import torch

    ids = torch.from_numpy(prompt[None].astype(np.int64))
    logits = model.step(ids, 0)
    out = []
    for _ in range(n):
        nxt = logits.argmax(-1, keepdim=True)  # (1, 1)
        out.append(int(nxt))
        ids = torch.cat([ids, nxt], dim=1)
        logits = model.step(nxt, ids.shape[1] - 1) if use_cache else model.step(ids, 0)
    return out


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def bench_shape(shape: str, repeats: int) -> str:
    import torch

    from npllm.decode import PARALLEL, SERIAL
    from npllm.generate import Decoder, generate
    from npllm.gpt import GPT, GPTConfig
    from npllm.quant import load_weights, quantize_state_dict, weight_bytes

    torch.set_num_threads(2)
    cfg = GPTConfig(**model_config(shape))
    model = GPT(cfg, seed=0)
    sd = model.state_dict()
    dec = Decoder.from_model(model)  # picks serial or parallel products itself, by timing
    forced = {}
    for par_min in (SERIAL, PARALLEL):
        forced[par_min] = Decoder.from_model(model)
        forced[par_min].par_min = par_min
    weights_f = load_weights(sd)
    weights_q = load_weights(quantize_state_dict(sd, embedding=True))
    qdec = Decoder(cfg, weights_q)
    tmodel = torch_kv_model(cfg, sd)
    prompt = np.array([0])
    n = cfg.block_size - 1

    runs = {
        "npllm, KV cache": lambda: generate(dec, prompt, n, greedy=True)[0].tolist(),
        "npllm, KV cache, serial products": lambda: generate(
            forced[SERIAL], prompt, n, greedy=True
        )[0].tolist(),
        "npllm, KV cache, parallel products": lambda: generate(
            forced[PARALLEL], prompt, n, greedy=True
        )[0].tolist(),
        "PyTorch eager, KV cache": lambda: torch_generate(tmodel, prompt, n),
        "npllm, recompute": lambda: generate(dec, prompt, n, greedy=True, use_cache=False)[
            0
        ].tolist(),
        "PyTorch eager, recompute": lambda: torch_generate(tmodel, prompt, n, use_cache=False),
        "npllm int8, KV cache": lambda: generate(qdec, prompt, n, greedy=True)[0].tolist(),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    ids: dict[str, list[int]] = {}
    for fn in runs.values():  # warm-up: Numba compiles, caches fill
        fn()
    names = list(runs)
    for r in range(repeats):
        # rotate who goes first, as benchmarks/common.interleaved does
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = runs[name]
            dt, ids[name] = timed(fn)
            times[name].append(dt)
    tok_s = {k: n / statistics.median(v) for k, v in times.items()}
    torch_c = tok_s["PyTorch eager, KV cache"]
    cache_speedup = tok_s["npllm, KV cache"] / tok_s["npllm, recompute"]
    same = ids["npllm, KV cache"] == ids["PyTorch eager, KV cache"] == ids["npllm, recompute"]
    agree_q = np.mean(np.array(ids["npllm int8, KV cache"]) == np.array(ids["npllm, KV cache"]))

    def choice(d: Decoder) -> str:
        if d.par_min is None:
            return "serial (none is big enough for the parallel path)"
        return (
            f"{'parallel' if d.par_min == PARALLEL else 'serial'}, chosen by timing both "
            "in its first decode steps"
        )

    lin_f, lin_q = weight_bytes(weights_f, linear_only=True), weight_bytes(weights_q, True)
    all_f, all_q = weight_bytes(weights_f), weight_bytes(weights_q)
    s = SHAPES[shape]
    lines = [
        f"### {shape}: V={s['vocab_size']} L={s['n_layer']} nh={s['n_head']} "
        f"C={s['n_embd']} block={s['block_size']} {s['activation']}, batch 1, "
        f"{n} greedy tokens, median of {repeats}",
        "",
        "| run | tokens/s | vs PyTorch eager + KV cache |",
        "|---|---|---|",
        *[f"| {k} | {v:,.0f} | {v / torch_c:.2f}x |" for k, v in tok_s.items()],
        "",
        f'- Products of "npllm, KV cache": {choice(dec)}; int8: {choice(qdec)}.',
        f"- KV cache over recomputation: npllm {cache_speedup:.1f}x, "
        f"PyTorch {torch_c / tok_s['PyTorch eager, recompute']:.1f}x.",
        f"- Greedy ids identical (npllm cached, npllm recompute, torch): {same}; int8 agrees "
        f"with float on {agree_q:.0%} of the greedy ids.",
        f"- int8 (Linears + tied embedding): Linear weights {lin_f / 1e6:.2f} MB -> "
        f"{lin_q / 1e6:.2f} MB ({lin_f / lin_q:.2f}x smaller); all weights "
        f"{all_f / 1e6:.2f} MB -> {all_q / 1e6:.2f} MB ({all_f / all_q:.2f}x).",
        "",
    ]
    return "\n".join(lines)


def trained_int8(run: str, eval_iters: int) -> str:
    """Val loss of a trained run's best checkpoint in float32 and int8, same batches."""
    from npllm.checkpoint import load_checkpoint
    from npllm.commands.quantize import val_loss
    from npllm.data import load_split
    from npllm.generate import Decoder
    from npllm.gpt import GPTConfig
    from npllm.quant import load_weights, quantize_state_dict, weight_bytes

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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--run", help="a trained run folder: also compare its val loss in int8")
    ap.add_argument("--eval-iters", type=int, default=50, help="val batches for --run")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    shapes = list(SHAPES) if args.shape == "all" else [args.shape]
    import torch

    torch.set_num_threads(2)
    info = machine_info()
    head = "\n".join(
        [
            f"Machine: {info['cpu']}; Python {info['python']}, numpy {info['numpy']}, numba "
            f"{info['numba']}, torch {info['torch']}. Date: {info['date']}.",
            f"Command: `python benchmarks/generate.py {' '.join(argv or sys.argv[1:])}`",
            "",
        ]
    )
    print(head)
    parts = [head]
    for shape in shapes:
        parts.append(bench_shape(shape, args.repeats))
        print(parts[-1], flush=True)
    if args.run:
        parts.append(trained_int8(args.run, args.eval_iters))
        print(parts[-1], flush=True)
    if args.write:
        write_section("Generation", "\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
