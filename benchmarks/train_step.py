"""One full training step (forward, backward, clip, AdamW) of npllm beside PyTorch eager,
each in its own processes with its own default settings. PyTorch's model is the reference
GPT of tests/model/torch_gpt.py with torch's fastest attention, scaled_dot_product_attention
(nanoGPT's path); the Llama family's is transformers' LlamaForCausalLM at its defaults.

A first npllm process writes the initial weights, the model config and the batches to a
temporary .npz; then npllm and torch processes alternate (npllm, torch; torch, npllm; ...),
each loading that file, taking `--warmup` untimed steps and `--steps` timed ones, and
reporting its step times, its losses and its peak RSS. The parent imports neither
framework and sets no thread variable; torch runs at its default thread count. The losses
of the two frameworks (same weights, same batches) are compared step by step: speed is
never bought with a wrong answer, and a mismatch fails the run.

    python benchmarks/train_step.py                        # cpu-small and guppy
    python benchmarks/train_step.py --shape guppy --rounds 6 --steps 10
    npllm bench train [--write]                            # the same

FLOPs per token follow nanoGPT/PaLM: 6 N + 12 L C T, N all parameters that enter matmuls
(`num_params()` with the tied embedding).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.common and the torch reference in tests/

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

# name -> (npllm.config preset, overrides): the vocabulary and batch of the benchmark
SHAPES: dict[str, tuple[str | None, dict]] = {
    "cpu-small": ("cpu-small", dict(vocab_size=65, batch_size=12)),  # nanoGPT's CPU run
    "guppy": ("guppy", dict(vocab_size=4096, batch_size=8)),  # GuppyLM's shape
    # the Llama family (RoPE, RMSNorm, SwiGLU, grouped-query attention); PyTorch's side is
    # transformers' LlamaForCausalLM at its defaults
    "llama-small": ("llama-small", dict(vocab_size=65, batch_size=12)),
    # for the harness's tests only
    "tiny": (None, dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, batch_size=2)),
    "tiny-llama": (
        "llama-small",
        dict(vocab_size=11, block_size=8, n_layer=1, n_embd=16, mlp_hidden=24, batch_size=2),
    ),  # fmt: skip
}
LR, WD, BETAS, CLIP = 1e-3, 0.1, (0.9, 0.99), 1.0
LOSS_TOLERANCE = 1e-3  # relative; float32 losses of the two frameworks agree to ~1e-5


# ---- the npllm side ----------------------------------------------------------------------
def shape_config(shape: str) -> dict:
    """Every GPTConfig field of a shape (the npllm.config preset over GPTConfig's defaults,
    then the overrides), dropout 0 (the torch reference has none), plus batch_size.
    Runs in an npllm process."""
    import dataclasses

    from npllm.config import PRESETS
    from npllm.gpt import GPTConfig

    preset, overrides = SHAPES[shape]
    fields = dataclasses.fields(GPTConfig)
    out = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    names = {f.name for f in fields}
    if preset is not None:
        out.update({k: v for k, v in PRESETS[preset].items() if k in names | {"batch_size"}})
    return {**out, **overrides, "dropout": 0.0}


def model_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "batch_size"}


def files(folder: str, shape: str) -> tuple[Path, Path]:
    return Path(folder) / f"{shape}.json", Path(folder) / f"{shape}.npz"


def prepare(spec: dict) -> dict:
    """npllm process: write `shape`'s config, seeded initial weights and `n_batches`
    random batches into spec["dir"], for every worker to load."""
    import numpy as np

    import npllm  # noqa: F401  (npllm first, as in every npllm-side worker)
    from npllm.gpt import GPT, GPTConfig

    shape, n = spec["shape"], spec["n_batches"]
    config = shape_config(shape)
    model = GPT(GPTConfig(**model_config(config)), seed=0)
    rng = np.random.default_rng(0)
    B, T, V = config["batch_size"], config["block_size"], config["vocab_size"]
    data = rng.integers(0, V, size=(n, B, T + 1))
    meta_path, arrays_path = files(spec["dir"], shape)
    np.savez(
        arrays_path,
        x=data[:, :, :-1].astype(np.int64),
        y=data[:, :, 1:].astype(np.int64),
        **{"w:" + k: v for k, v in model.state_dict().items()},
    )
    n_params = model.num_params(non_embedding=False)
    meta = {"config": config, "n_params": n_params}
    meta_path.write_text(json.dumps(meta))
    return meta


def load(folder: str, shape: str):
    """(meta, weights, xs, ys) as `prepare` wrote them."""
    import numpy as np

    meta_path, arrays_path = files(folder, shape)
    meta = json.loads(meta_path.read_text())
    with np.load(arrays_path) as z:
        weights = {k[2:]: z[k] for k in z.files if k.startswith("w:")}
        xs, ys = z["x"], z["y"]
    return meta, weights, xs, ys


def npllm_trainer(config: dict, weights: dict):
    """A function doing one npllm training step on (x, y) and returning the loss."""
    from npllm.gpt import GPT, GPTConfig
    from npllm.optim import clip_grad_norm

    model = GPT(GPTConfig(**model_config(config)), seed=0)
    model.load_state_dict(weights)
    opt = model.configure_optimizers(WD, LR, BETAS)
    params = model.parameters()

    def step(x, y) -> float:
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(params, CLIP)
        opt.step()
        return loss.item()

    return step


def torch_model_and_adamw(model_cfg: dict, weights: dict, lr: float, wd: float, betas):
    """The PyTorch reference GPT (tests/model/torch_gpt.py) holding `weights`, with
    torch's fastest attention (scaled_dot_product_attention, as nanoGPT uses: 6-10% faster
    steps than explicit attention here), and torch's AdamW with decay on 2-D weights only,
    as npllm's configure_optimizers."""
    import inspect

    from tests.model.torch_gpt import TorchConfig, torch_gpt_from

    accepted = inspect.signature(TorchConfig).parameters
    cfg = {k: v for k, v in model_cfg.items() if k in accepted}
    model = torch_gpt_from(weights, TorchConfig(**cfg, sdpa=True))
    return model, torch_adamw(model, lr, wd, betas)


def torch_adamw(model, lr: float, wd: float, betas):
    """torch's AdamW with decay on 2-D weights only, as npllm's configure_optimizers."""
    import torch

    params = list(model.parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=tuple(betas),
    )


def torch_llama(c: dict, weights: dict):
    """transformers' LlamaForCausalLM (its default attention) holding npllm's weights, whose
    names are transformers' own for this family."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=c["vocab_size"],
        hidden_size=c["n_embd"],
        intermediate_size=c["mlp_hidden"],
        num_hidden_layers=c["n_layer"],
        num_attention_heads=c["n_head"],
        num_key_value_heads=c["n_kv_head"] or c["n_head"],
        max_position_embeddings=c["block_size"],
        rms_norm_eps=c["norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
        tie_word_embeddings=c["tie_embeddings"],
        attention_bias=c["bias"],
        mlp_bias=c["bias"],
    )
    model = LlamaForCausalLM(cfg)
    model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()}, strict=True)
    return model


def torch_trainer(config: dict, weights: dict):
    """The same step in PyTorch eager, torch's AdamW."""
    import torch

    if config.get("pos_embedding") == "rope":
        model = torch_llama(model_config(config), weights).train()
        opt = torch_adamw(model, LR, WD, BETAS)
        V = config["vocab_size"]

        def forward(x, y):
            logits = model(input_ids=x).logits
            return None, torch.nn.functional.cross_entropy(logits.view(-1, V), y.view(-1))
    else:
        model, opt = torch_model_and_adamw(model_config(config), weights, LR, WD, BETAS)
        forward = model
    params = list(model.parameters())

    def step(x, y) -> float:
        _, loss = forward(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        return loss.item()

    return step


def train_worker(spec: dict) -> dict:
    """One framework's process: `warmup` + `steps` steps on the prepared batches."""
    if spec["framework"] == "torch":
        import torch  # noqa: F401  (torch first: this process never loads npllm)

        make = torch_trainer
    else:
        import npllm  # noqa: F401

        make = npllm_trainer
        if spec["framework"] == "numpy":
            from npllm import kernels

            kernels.use("numpy")
    meta, weights, xs, ys = load(spec["dir"], spec["shape"])
    step = make(meta["config"], weights)
    times, losses = [], []
    for i in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        losses.append(step(xs[i], ys[i]))
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    return {"samples": {"step": times}, "losses": losses}


WORKERS = {"prepare": prepare, "train": train_worker}


# ---- the parent --------------------------------------------------------------------------
def loss_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def measure(shape: str, rounds: int, steps: int, warmup: int, numpy_ref: bool, folder: str):
    """Prepare the shape, then alternate the frameworks' processes. Returns (meta, results)."""
    script = Path(__file__)
    [prep] = alternate(
        script,
        [
            Job(
                "prepare",
                "prepare",
                {"framework": "npllm", "shape": shape, "dir": folder, "n_batches": warmup + steps},
            )
        ],
        1,
        echo=lambda _: None,
    ).values()
    meta = prep[0]
    names = ["npllm", "torch"] + (["numpy"] if numpy_ref else [])
    common = {"shape": shape, "dir": folder, "steps": steps, "warmup": warmup}
    jobs = [Job(fw, "train", {"framework": fw, **common}) for fw in names]
    return meta, alternate(script, jobs, rounds)


def report(shape: str, meta: dict, results: dict[str, list[dict]], steps: int, warmup: int):
    """The shape's markdown table and its loss check: (text, worst relative gap)."""
    import statistics

    c = meta["config"]
    tokens = c["batch_size"] * c["block_size"]
    fpt = 6 * meta["n_params"] + 12 * c["n_layer"] * c["n_embd"] * c["block_size"]
    st = {fw: stats(runs, "step") for fw, runs in results.items()}
    rounds = len(results["npllm"])
    lines = [
        f"### {shape}: B={c['batch_size']} T={c['block_size']} L={c['n_layer']} "
        f"nh={c['n_head']} C={c['n_embd']} V={c['vocab_size']} "
        f"MLP {c['mlp_hidden'] or 4 * c['n_embd']} "
        f"{c['activation']} ({meta['n_params'] / 1e6:.2f}M params); {rounds} rounds, each "
        f"process {warmup} warm-up + {steps} timed steps",
        "",
        "| framework | step ms: median (runs min-max; IQR of all) | tokens/s | GFLOP/s | "
        "peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for fw, s in st.items():
        rss = statistics.median(r["info"]["peak_rss_mb"] for r in results[fw])
        lines.append(
            f"| {fw} | {s.fmt(1e3)} | {tokens / s.median:,.0f} | "
            f"{fpt * tokens / s.median / 1e9:.0f} | {rss:.0f} |"
        )
    # the same weights and batches: every process must produce the same losses
    ref = results["npllm"][0]["losses"]
    gaps = {fw: max(loss_gap(r["losses"], ref) for r in runs) for fw, runs in results.items()}
    worst = max(gaps.values())
    rss = {
        fw: statistics.median(r["info"]["peak_rss_mb"] for r in results[fw])
        for fw in ("npllm", "torch")
    }
    lines += [
        "",
        f"npllm/torch step time: **{ratio(st['npllm'], st['torch'])}**; peak RSS "
        f"{rss['npllm'] / rss['torch']:.2f}. Largest relative loss gap to npllm's first "
        f"run over {len(ref)} steps: " + ", ".join(f"{fw} {g:.1e}" for fw, g in gaps.items()) + ".",
    ]
    if worst > LOSS_TOLERANCE:
        lines.append(
            f"\n**LOSS MISMATCH**: the frameworks' losses differ by {worst:.1e} (relative), "
            f"more than {LOSS_TOLERANCE:g}; these timings compare different computations."
        )
    return "\n".join(lines) + "\n", worst


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--worker":
        return run_worker(argv, WORKERS)
    ap = argparse.ArgumentParser(prog="npllm bench train", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shape",
        choices=[*SHAPES, "all"],
        default="all",
        help="model shape (all: cpu-small and guppy; llama-small is written to its own section)",
    )
    ap.add_argument("--rounds", type=int, default=4, help="processes per framework")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per process")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per process")
    ap.add_argument(
        "--numpy",
        action="store_true",
        help="also time npllm with the NumPy reference kernels (own processes)",
    )
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)  # another RESULTS.md
    args = ap.parse_args(argv)
    shapes = ["cpu-small", "guppy"] if args.shape == "all" else [args.shape]
    load0 = load_average()
    parts, worst, everything = [], 0.0, {}
    with tempfile.TemporaryDirectory() as folder:
        for shape in shapes:
            log(f"== {shape}")
            meta, results = measure(shape, args.rounds, args.steps, args.warmup, args.numpy, folder)
            text, gap = report(shape, meta, results, args.steps, args.warmup)
            print(text, flush=True)
            parts.append(text)
            worst = max(worst, gap)
            for label, runs in results.items():
                everything.setdefault(label, []).extend(runs)
    head = header(
        everything,
        (load0, load_average()),
        command_line("train_step.py", argv),
        "Each framework in its own processes at its default thread count, alternating; "
        "medians over all timed steps of all processes.",
    )
    print(head)
    if args.write or args.results:
        write_section(
            section_heading("Training step", shapes),
            head + "\n" + "\n".join(parts),
            *([args.results] if args.results else []),
        )
    if worst > LOSS_TOLERANCE:
        print(f"LOSS MISMATCH: npllm and torch losses differ by {worst:.1e} (relative)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
