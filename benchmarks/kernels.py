"""Every kernel, forward and backward, in Numba, NumPy and PyTorch eager, at the shapes one
training step of each config uses; and the matmuls as GFLOP/s against the BLAS peak.

    python benchmarks/kernels.py                       # both shapes, prints the tables
    python benchmarks/kernels.py --write               # ... and updates RESULTS.md
    python benchmarks/kernels.py --jit                 # cold compile / warm cache times
    npllm bench kernels [--shape guppy] [--write]      # the same

The three implementations of a kernel are timed interleaved in one process (one sample
of each in turn), float32, torch at 2 threads; the table gives medians and the ratio to
torch (below 1 = faster than torch). Kernels are called directly, without the autograd
layer, so the numbers are the kernels' own. Torch's backward is `autograd.grad` on a
retained graph, which times the backward kernels (plus torch's dispatch, as in training).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import npllm  # noqa: E402,F401  (sets the thread-pool environment before numpy loads)
from benchmarks.common import interleaved, machine_info, median_ms, write_section  # noqa: E402

SHAPES = {
    # nanoGPT's CPU Shakespeare config
    "cpu-small": dict(B=12, T=64, C=128, nh=4, V=65, H=512, act="gelu"),
    # GuppyLM's config
    "guppy": dict(B=8, T=128, C=384, nh=6, V=4096, H=768, act="relu"),
    # for the smoke test only
    "tiny": dict(B=2, T=8, C=16, nh=2, V=11, H=32, act="gelu"),
}
IMPLS = ("numba", "numpy", "torch")
# the ops the issue sets a target for: fwd+bwd at least as fast as torch eager
TARGETS = ("softmax", "layernorm", "gelu", "cross_entropy", "attention")


@dataclass
class Case:
    kernel: str
    pass_: str  # "fwd" or "bwd"
    fns: dict = field(default_factory=dict)
    flops: float = 0.0


def param_count(s: dict) -> int:
    """Parameters of the GPT at this shape (tied lm_head), for the AdamW case."""
    C, H, V, T = s["C"], s["H"], s["V"], s["T"]
    n_layer = 6 if s["C"] == 384 else 4
    per_layer = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (H * C + H) + (C * H + C)
    return V * C + T * C + n_layer * per_layer + 2 * C


def build_cases(s: dict, seed: int = 0) -> list[Case]:
    """One Case per kernel and pass. Each kernel's inputs are made in its own function,
    so no closure sees another kernel's arrays."""
    import numpy as np
    import torch
    import torch.nn.functional as TF

    from npllm import kernels as K

    rng = np.random.default_rng(seed)
    B, T, C, nh, V, H = s["B"], s["T"], s["C"], s["nh"], s["V"], s["H"]
    N, hs = B * T, C // nh

    def f32(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def tt(a, grad=True):
        return torch.tensor(a, requires_grad=grad)

    def grad_fn(out, inputs, g):
        tg = torch.tensor(g)
        return lambda: torch.autograd.grad(out, inputs, tg, retain_graph=True)

    def call(fn, *args):
        return lambda: fn(*args)

    def ours(name, *args):
        return {b: call(K.get(name, b), *args) for b in ("numba", "numpy")}

    cases: list[Case] = []

    def add(kernel, fwd, bwd, torch_fwd, torch_bwd, flops=0.0):
        cases.append(Case(kernel, "fwd", {**fwd, "torch": torch_fwd}, flops))
        cases.append(Case(kernel, "bwd", {**bwd, "torch": torch_bwd}, 2 * flops))

    def softmax():  # over attention-score rows (B, nh, T, T), as explicit attention has
        x = f32(B * nh * T, T, scale=2.0)
        y, dy = K.get("softmax_forward", "numpy")(x), f32(B * nh * T, T)
        tx = tt(x)
        add(
            "softmax",
            ours("softmax_forward", x),
            ours("softmax_backward", dy, y),
            call(torch.softmax, tx, -1),
            grad_fn(torch.softmax(tx, -1), tx, dy),
        )

    def layernorm():  # (B*T, C)
        x, w, b, dy = f32(N, C), 1 + f32(C, scale=0.1), f32(C, scale=0.1), f32(N, C)
        _, mean, rstd = K.get("layernorm_forward", "numpy")(x, w, b, 1e-5)
        tx, tw, tb = tt(x), tt(w), tt(b)
        add(
            "layernorm",
            ours("layernorm_forward", x, w, b, 1e-5),
            ours("layernorm_backward", dy, x, mean, rstd, w),
            call(TF.layer_norm, tx, (C,), tw, tb),
            grad_fn(TF.layer_norm(tx, (C,), tw, tb), (tx, tw, tb), dy),
        )

    def activations():  # the MLP's hidden (B*T, H)
        x, dy = f32(N, H), f32(N, H)
        tx = tt(x)
        gelu = lambda a: TF.gelu(a, approximate="tanh")  # noqa: E731
        add(
            "gelu",
            ours("gelu_forward", x, "tanh"),
            ours("gelu_backward", dy, x, "tanh"),
            call(gelu, tx),
            grad_fn(gelu(tx), tx, dy),
        )
        add(
            "relu",
            ours("relu_forward", x),
            ours("relu_backward", dy, np.maximum(x, 0)),
            call(torch.relu, tx),
            grad_fn(torch.relu(tx), tx, dy),
        )

    def cross_entropy():  # fused softmax + CE on the logits (B*T, V)
        logits, targets = f32(N, V, scale=2.0), rng.integers(0, V, size=N)
        _, lse = K.get("cross_entropy_forward", "numpy")(logits, targets, -1)
        tl, tt_ = tt(logits), torch.tensor(targets)
        one = np.asarray(1.0, np.float32)
        add(
            "cross_entropy",
            ours("cross_entropy_forward", logits, targets, -1),
            ours("cross_entropy_backward", one, logits, targets, lse, -1),
            call(TF.cross_entropy, tl, tt_),
            grad_fn(TF.cross_entropy(tl, tt_), tl, one),
        )

    def attention():  # causal (B, nh, T, hs) against torch's fastest path, SDPA
        q, k, v = (f32(B, nh, T, hs) for _ in range(3))
        out, att = K.get("attention_forward", "numpy")(q, k, v, True)
        dy = f32(*out.shape)
        tq, tk, tv = tt(q), tt(k), tt(v)
        sdpa = lambda a, b, c: TF.scaled_dot_product_attention(a, b, c, is_causal=True)  # noqa: E731
        add(
            "attention",
            ours("attention_forward", q, k, v, True),
            ours("attention_backward", dy, q, k, v, att, True),
            call(sdpa, tq, tk, tv),
            grad_fn(sdpa(tq, tk, tv), (tq, tk, tv), dy),
            flops=4.0 * B * nh * T * T * hs,
        )

    def embedding():  # the token table
        idx, w, dy = rng.integers(0, V, size=N), f32(V, C), f32(N, C)
        tw, ti = tt(w), torch.tensor(idx)
        add(
            "embedding",
            ours("embedding_forward", idx, w),
            ours("embedding_backward", dy, idx, V),
            call(TF.embedding, ti, tw),
            grad_fn(TF.embedding(ti, tw), tw, dy),
        )

    def dropout():  # p=0.1 on the residual stream, drawing the mask included
        x, dy = f32(N, C), f32(N, C)
        drng = np.random.default_rng(1)
        _, keep = K.get("dropout_forward", "numpy")(x, drng.random(x.shape, np.float32), 0.1)
        tx = tt(x)

        def drop(f):
            return lambda: f(x, drng.random(x.shape, dtype=np.float32), 0.1)

        add(
            "dropout",
            {b: drop(K.get("dropout_forward", b)) for b in ("numba", "numpy")},
            ours("dropout_backward", dy, keep, 0.1),
            call(TF.dropout, tx, 0.1, True),
            grad_fn(TF.dropout(tx, 0.1, True), tx, dy),
        )

    def linear():  # the MLP's first layer; every layer is in the matmul table
        x, w, b, dy = f32(N, C), f32(H, C, scale=0.05), f32(H), f32(N, H)
        tx, tw, tb = tt(x), tt(w), tt(b)
        add(
            "linear (mlp.c_fc)",
            ours("linear_forward", x, w, b),
            ours("linear_backward", dy, x, w, True, True, True),
            call(TF.linear, tx, tw, tb),
            grad_fn(TF.linear(tx, tw, tb), (tx, tw, tb), dy),
            flops=2.0 * N * C * H,
        )

    def adamw():  # every parameter as one flat buffer; torch.optim.AdamW's defaults
        n = param_count(s)
        p, g = f32(n, scale=0.02), f32(n, scale=1e-3)
        m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
        tp = torch.zeros(n, requires_grad=True)
        tp.grad = torch.tensor(g)
        opt = torch.optim.AdamW([tp], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
        args = (p, g, m, v, 1e-3, 0.9, 0.99, 1e-8, 0.1, 10)
        cases.append(
            Case(
                f"adamw ({n / 1e6:.2f}M params)",
                "step",
                {**ours("adamw_update", *args), "torch": opt.step},
            )
        )

    for make in (
        softmax,
        layernorm,
        activations,
        cross_entropy,
        attention,
        embedding,
        dropout,
        linear,
        adamw,
    ):
        make()
    return cases


def linear_shapes(s: dict) -> list[tuple[str, int, int, int]]:
    """(name, N, in, out) of every linear layer in a training step."""
    N, C, H, V = s["B"] * s["T"], s["C"], s["H"], s["V"]
    return [
        ("attn.c_attn", N, C, 3 * C),
        ("attn.c_proj", N, C, C),
        ("mlp.c_fc", N, C, H),
        ("mlp.c_proj", N, H, C),
        ("lm_head", N, C, V),
    ]


def _matmul_fns(x, w, dy, gemm_numba) -> dict:
    import torch

    from npllm import kernels as K

    tx, tw, tdy = torch.tensor(x), torch.tensor(w), torch.tensor(dy)
    return {
        # forward: x @ w.T
        "fwd": {
            "blas": lambda: x @ w.T,
            "numba": lambda: gemm_numba(x, w.T),
            "torch": lambda: tx @ tw.T,
        },
        # backward: dx = dy @ w and dw = dy.T @ x (BLAS as the default linear_backward
        # arranges it: see npllm/kernels/matmul.py, _weight_grad)
        "bwd": {
            "blas": lambda: K.get("linear_backward", "numpy")(dy, x, w, True, True, False),
            "numba": lambda: (gemm_numba(dy, w), gemm_numba(dy.T, x)),
            "torch": lambda: (tdy @ tw, tdy.T @ tx),
        },
    }


def matmul_table(s: dict, reps: int) -> list[str]:
    import numpy as np

    from npllm.kernels.matmul import gemm_numba

    rng = np.random.default_rng(0)
    rows = [
        "| layer | N x in -> out | pass | BLAS (default) | Numba blocked | torch | Numba / BLAS |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, N, cin, cout in linear_shapes(s):
        x = rng.standard_normal((N, cin)).astype(np.float32)
        w = rng.standard_normal((cout, cin)).astype(np.float32)
        dy = rng.standard_normal((N, cout)).astype(np.float32)
        passes = _matmul_fns(x, w, dy, gemm_numba)
        for pass_, fns in passes.items():
            flops = 2.0 * N * cin * cout * (1 if pass_ == "fwd" else 2)
            t = {k: median_ms(v) / 1e3 for k, v in interleaved(fns, reps=max(3, reps // 3)).items()}
            gf = {k: flops / t[k] / 1e9 for k in t}
            rows.append(
                f"| {name} | {N}x{cin}->{cout} | {pass_} | {gf['blas']:.0f} GFLOP/s | "
                f"{gf['numba']:.0f} GFLOP/s | {gf['torch']:.0f} GFLOP/s | "
                f"{gf['numba'] / gf['blas']:.2f} |"
            )
    return rows


def blas_peak() -> float:
    """GFLOP/s of a large square float32 GEMM through numpy's BLAS: the reference peak."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    b = a.T.copy()
    t = median_ms(interleaved({"peak": lambda: a @ b}, reps=7)["peak"]) / 1e3
    return 2.0 * 1024**3 / t / 1e9


def run_shape(name: str, reps: int, only=None) -> tuple[list[str], list[str], dict]:
    s = SHAPES[name]
    cases = [c for c in build_cases(s) if not only or any(o in c.kernel for o in only)]
    rows = [
        "| kernel | pass | Numba ms | NumPy ms | torch ms | Numba/torch | NumPy/torch |",
        "|---|---|---|---|---|---|---|",
    ]
    per_kernel: dict[str, dict[str, float]] = {}
    for case in cases:
        med = {k: median_ms(v) for k, v in interleaved(case.fns, reps=reps).items()}
        tot = per_kernel.setdefault(case.kernel, dict.fromkeys(IMPLS, 0.0))
        for k in IMPLS:
            tot[k] += med[k]
        rows.append(
            f"| {case.kernel} | {case.pass_} | {med['numba']:.3f} | {med['numpy']:.3f} | "
            f"{med['torch']:.3f} | {med['numba'] / med['torch']:.2f} | "
            f"{med['numpy'] / med['torch']:.2f} |"
        )
    summary = [
        "| kernel | fwd+bwd Numba ms | NumPy ms | torch ms | Numba/torch | "
        "NumPy/torch | faster of ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for kernel, tot in per_kernel.items():
        best = "numba" if tot["numba"] <= tot["numpy"] else "numpy"
        mark = " (target)" if kernel in TARGETS else ""
        summary.append(
            f"| {kernel}{mark} | {tot['numba']:.3f} | {tot['numpy']:.3f} | "
            f"{tot['torch']:.3f} | {tot['numba'] / tot['torch']:.2f} | "
            f"{tot['numpy'] / tot['torch']:.2f} | {best} |"
        )
    return rows, summary, per_kernel


def shape_label(name: str) -> str:
    s = SHAPES[name]
    return (
        f"{name}: B={s['B']} T={s['T']} C={s['C']} nh={s['nh']} V={s['V']} "
        f"MLP {s['H']} {s['act'].upper()}"
    )


# ---- JIT cost ---------------------------------------------------------------------------
_JIT_PROBE = r"""
import json, time
t0 = time.perf_counter()
import npllm, npllm.functional as F
from npllm import kernels as K
t_import = time.perf_counter() - t0
import numba
import numpy as np
from benchmarks.kernels import SHAPES, build_cases

def misses():
    mods = (K.matmul, K.softmax, K.layernorm, K.activations, K.crossentropy, K.attention,
            K.embedding, K.dropout, K.adamw)
    return sum(sum(obj.stats.cache_misses.values()) for mod in mods for obj in vars(mod).values()
               if isinstance(obj, numba.core.registry.CPUDispatcher))

t1 = time.perf_counter()
from npllm.gpt import GPT, GPTConfig
from npllm.optim import AdamW
rng = np.random.default_rng(0)
cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
model = GPT(cfg)
opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
idx = rng.integers(0, 65, size=(12, 65))
_, loss = model(idx[:, :-1], idx[:, 1:])
loss.backward()
opt.step()
t_step = time.perf_counter() - t1
misses_step = misses()
t2 = time.perf_counter()
with K.use("numba"):
    for shape in ("cpu-small", "tiny"):
        for case in build_cases(SHAPES[shape]):
            case.fns["numba"]()
t_all = time.perf_counter() - t2
print(json.dumps(dict(import_s=t_import, step_s=t_step, misses_step=misses_step,
                      all_s=t_all, misses=misses())))
"""


def jit_cost() -> list[str]:
    """Cold (empty Numba cache) and warm (cached) start, each in a fresh process: the time
    to import npllm.functional, to run the first training step of a cpu-small GPT
    (forward, backward, AdamW) in the default mode, then to call every Numba kernel once
    (float32, cpu-small and tiny shapes: parallel and serial paths), and how many
    functions were compiled rather than loaded from the cache."""
    import json

    root = Path(__file__).resolve().parents[1]
    rows = [
        "| run | import npllm.functional | first training step (cpu-small GPT) | then every "
        "Numba kernel once (with building the inputs) | functions compiled (step / all) |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(root)}
        for label in ("cold (empty cache)", "warm (cached)"):
            out = subprocess.run(
                [sys.executable, "-c", _JIT_PROBE],
                env=env,
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                f"| {label} | {r['import_s']:.2f} s | {r['step_s']:.2f} s | {r['all_s']:.2f} s "
                f"| {r['misses_step']} / {r['misses']} |"
            )
    return rows


# ---- main ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="npllm bench kernels", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shape",
        choices=list(SHAPES),
        action="append",
        help="shape(s) to run (default: cpu-small and guppy)",
    )
    ap.add_argument(
        "--only",
        action="append",
        metavar="KERNEL",
        help="time only kernels whose name contains this (repeatable)",
    )
    ap.add_argument("--reps", type=int, default=15, help="samples per implementation")
    ap.add_argument("--no-matmul", action="store_true", help="skip the GFLOP/s table")
    ap.add_argument("--jit", action="store_true", help="also measure cold/warm compile times")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    shapes = args.shape or ["cpu-small", "guppy"]
    info = machine_info()
    t_start = time.time()
    cmd = " ".join(["python benchmarks/kernels.py", *(sys.argv[1:] if argv is None else argv)])
    out = [
        f"Machine: {info['cpu']}; Python {info['python']}, numpy {info['numpy']}, "
        f"numba {info['numba']}, torch {info['torch']}. Date: {info['date']}.",
        f"Command: `{cmd}`",
        "",
        "Medians of interleaved samples, float32, ms per call; ratio = ours / torch eager "
        "(below 1 = faster than torch). The machine is shared with other work (load "
        f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start): "
        "differences under ~10% are noise, and 2-thread OpenBLAS calls stall whenever "
        "a core is taken, which shows as erratic BLAS GFLOP/s below (the same GEMM ran "
        "at 0.3 ms or 30 ms from one minute to the next).",
        "",
    ]
    printed = 0
    for name in shapes:
        rows, summary, per_kernel = run_shape(name, args.reps, args.only)
        verdicts = [
            f"{k} {t['numba'] / t['torch']:.2f} "
            f"({'met' if t['numba'] <= t['torch'] else 'NOT met'})"
            for k, t in per_kernel.items()
            if k in TARGETS
        ]
        if verdicts:
            summary += [
                "",
                "Targets (default Numba kernel, fwd+bwd, ratio to torch <= 1): "
                + ", ".join(verdicts)
                + ".",
            ]
        out += [
            f"### {shape_label(name)}",
            "",
            "Forward + backward per kernel:",
            "",
            *summary,
            "",
            "Each pass:",
            "",
            *rows,
            "",
        ]
        if not args.no_matmul:
            out += [
                "Matmuls of the training step (GFLOP/s, higher is better):",
                "",
                *matmul_table(SHAPES[name], args.reps),
                "",
            ]
        print("\n".join(out[printed:]), flush=True)
        printed = len(out)
    if not args.no_matmul:
        peak = blas_peak()
        out += [f"BLAS peak (numpy float32 GEMM 1024^3): {peak:.0f} GFLOP/s.", ""]
    if args.jit:
        out += ["### JIT cost", "", *jit_cost(), ""]
    out.append(
        f"(benchmark wall time {time.time() - t_start:.0f} s, load average at the end "
        f"{os.getloadavg()[0]:.1f})"
    )
    text = "\n".join(out)
    print("\n".join(out[printed:]))
    if args.write:
        write_section("Kernels", text)
        print("updated benchmarks/RESULTS.md, section Kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
