"""One full training step (forward, backward, clip, AdamW) of npllm beside PyTorch eager.

Both models hold the same weights and see the same batches; steps are interleaved A/B in
one process after warm-up, at 2 threads each, so machine noise hits both alike. Peak memory
(RSS) is measured for each framework in its own fresh process. The losses of the two runs
are compared at every step: speed is never bought with a wrong answer.

    python benchmarks/train_step.py                 # both shapes
    python benchmarks/train_step.py --shape cpu-small --steps 30
    npllm bench train                               # the same

FLOPs per token follow nanoGPT/PaLM: 6 N + 12 L C T (N = non-embedding... here all
parameters that enter matmuls, i.e. `num_params()` with the tied embedding).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

# isort: off
import npllm  # noqa: F401  (before numpy: it sets the BLAS/OpenMP thread environment)
import numpy as np
# isort: on

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.common and the torch reference in tests/
from benchmarks.common import machine_info, write_section  # noqa: E402
from npllm.gpt import GPTConfig  # noqa: E402
from npllm.train import PRESETS  # noqa: E402


def _shape(preset: str, **overrides) -> dict:
    """Every GPTConfig field of a training preset (npllm.train.PRESETS over GPTConfig's
    defaults), without dropout (the torch reference has none), with the benchmark's
    vocabulary and batch size."""
    fields = dataclasses.fields(GPTConfig)
    model = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    names = {f.name for f in fields}
    model.update({k: v for k, v in PRESETS[preset].items() if k in names})
    return {**model, "dropout": 0.0, **overrides}


SHAPES = {
    "cpu-small": _shape("cpu-small", vocab_size=65, batch_size=12),  # nanoGPT's CPU run
    "guppy": _shape("guppy", vocab_size=4096, batch_size=8),  # GuppyLM's shape
}
LR, WD, BETAS, CLIP = 1e-3, 0.1, (0.9, 0.99), 1.0


def model_config(shape: str) -> dict:
    return {k: v for k, v in SHAPES[shape].items() if k not in ("batch_size", "dropout")}


def batches(shape: str, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    s = SHAPES[shape]
    rng = np.random.default_rng(seed)
    B, T, V = s["batch_size"], s["block_size"], s["vocab_size"]
    out = []
    for _ in range(n):
        data = rng.integers(0, V, size=(B, T + 1))
        out.append((data[:, :-1].astype(np.int64), data[:, 1:].astype(np.int64)))
    return out


class NpllmRunner:
    def __init__(self, shape: str):
        from npllm.gpt import GPT
        from npllm.optim import clip_grad_norm

        self.model = GPT(GPTConfig(**model_config(shape)), seed=0)
        self.opt = self.model.configure_optimizers(WD, LR, BETAS)
        self.params = self.model.parameters()
        self.clip = clip_grad_norm

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.model.state_dict()

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        _, loss = self.model(x, y)
        self.opt.zero_grad()
        loss.backward()
        self.clip(self.params, CLIP)
        self.opt.step()
        return loss.item()


class TorchRunner:
    def __init__(self, shape: str, state_dict: dict[str, np.ndarray] | None = None):
        import torch

        from tests.model.torch_gpt import TorchConfig, TorchGPT

        torch.set_num_threads(2)
        torch.manual_seed(0)
        self.torch = torch
        self.model = TorchGPT(TorchConfig(**model_config(shape)))
        if state_dict is not None:
            self.model.load_state_dict({k: torch.tensor(v) for k, v in state_dict.items()})
        params = list(self.model.parameters())
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
            lr=LR,
            betas=BETAS,
        )
        self.params = params

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        torch = self.torch
        _, loss = self.model(torch.from_numpy(x), torch.from_numpy(y))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.opt.step()
        return loss.item()


def flops_per_token(shape: str, n_params: int) -> int:
    c = SHAPES[shape]
    return 6 * n_params + 12 * c["n_layer"] * c["n_embd"] * c["block_size"]


def measure_time(shape: str, steps: int, warmup: int) -> dict:
    npl = NpllmRunner(shape)
    tch = TorchRunner(shape, npl.state_dict())
    data = batches(shape, warmup + steps)
    times = {"npllm": [], "torch": []}
    losses = {"npllm": [], "torch": []}
    for i, (x, y) in enumerate(data):
        order = (("npllm", npl), ("torch", tch)) if i % 2 == 0 else (("torch", tch), ("npllm", npl))
        for name, runner in order:
            t0 = time.perf_counter()
            loss = runner.step(x, y)
            dt = time.perf_counter() - t0
            losses[name].append(loss)
            if i >= warmup:
                times[name].append(dt)
    gap = max(abs(a - b) / abs(b) for a, b in zip(losses["npllm"], losses["torch"]))
    n_params = npl.model.num_params(non_embedding=False)
    return {"times": times, "losses": losses, "max_rel_loss_gap": gap, "n_params": n_params}


def _rss_child(framework: str, shape: str, steps: int) -> None:
    """Run in a fresh process: build one framework's model, train a few steps, print peak RSS."""
    runner = NpllmRunner(shape) if framework == "npllm" else TorchRunner(shape)
    for x, y in batches(shape, steps):
        runner.step(x, y)
    print(json.dumps({"maxrss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident set. VmHWM, not getrusage: ru_maxrss survives exec on
    Linux, so a child started from a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_rss(framework: str, shape: str, steps: int = 5) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--rss-child",
            framework,
            "--shape",
            shape,
            "--steps",
            str(steps),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["maxrss_mb"]


def report(shape: str, steps: int, warmup: int) -> tuple[str, dict]:
    r = measure_time(shape, steps, warmup)
    rss = {fw: measure_rss(fw, shape) for fw in ("npllm", "torch")}
    s = SHAPES[shape]
    tokens = s["batch_size"] * s["block_size"]
    fpt = flops_per_token(shape, r["n_params"])
    med = {k: float(np.median(v)) for k, v in r["times"].items()}
    lines = [
        f"### {shape}: B={s['batch_size']} T={s['block_size']} L={s['n_layer']} "
        f"nh={s['n_head']} C={s['n_embd']} V={s['vocab_size']} "
        f"({r['n_params'] / 1e6:.2f}M params), {steps} timed steps after {warmup} warm-up",
        "",
        "| framework | median ms | min ms | max ms | tokens/s | GFLOP/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for fw in ("npllm", "torch"):
        t = r["times"][fw]
        lines.append(
            f"| {fw} | {med[fw] * 1e3:.1f} | {min(t) * 1e3:.1f} | {max(t) * 1e3:.1f} | "
            f"{tokens / med[fw]:,.0f} | {fpt * tokens / med[fw] / 1e9:.0f} | {rss[fw]:.0f} |"
        )
    ratio = med["npllm"] / med["torch"]
    lines += [
        "",
        f"npllm/torch step-time ratio: **{ratio:.2f}**; "
        f"RSS ratio {rss['npllm'] / rss['torch']:.2f}; max relative loss gap over "
        f"{len(r['losses']['npllm'])} steps: {r['max_rel_loss_gap']:.1e}",
        "",
    ]
    return "\n".join(lines), {"ratio": ratio, "gap": r["max_rel_loss_gap"]}


def header() -> str:
    info = machine_info()
    return (
        f"Machine: {info['cpu']}; Python {info['python']}, numpy {info['numpy']}, "
        f"numba {info['numba']}, torch {info['torch']}. Date: {info['date']}."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--rss-child", choices=["npllm", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        _rss_child(args.rss_child, args.shape, args.steps)
        return 0
    shapes = list(SHAPES) if args.shape == "all" else [args.shape]
    command = "python benchmarks/train_step.py " + " ".join(argv or sys.argv[1:])
    out = [header(), f"Command: `{command.strip()}`", ""]
    print("\n".join(out))
    worst_gap = 0.0
    for shape in shapes:
        text, r = report(shape, args.steps, args.warmup)
        print(text, flush=True)
        out.append(text)
        worst_gap = max(worst_gap, r["gap"])
    if args.write:
        write_section("Training step", "\n".join(out))
    if worst_gap > 1e-3:
        print(f"LOSS MISMATCH: npllm and torch losses differ by {worst_gap:.1e} (relative)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
