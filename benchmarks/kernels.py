"""Every kernel, forward and backward, in Numba, NumPy and PyTorch eager, at the shapes one
training step of each config uses; and the matmuls as GFLOP/s.

    python benchmarks/kernels.py                       # both shapes, prints the tables
    python benchmarks/kernels.py --write               # ... and updates RESULTS.md
    python benchmarks/kernels.py --jit                 # + cold start (benchmarks/cold_start.py)
    npllm bench kernels [--shape guppy] [--write]      # the same

Each implementation runs in processes of its own: npllm's kernels with
`npllm.kernels.use("numba")`, the same with `use("numpy")` (the NumPy references; matmuls
there are numpy's BLAS), and torch eager at its default thread count in a process that
never imports npllm. The three alternate (rotating who goes first) for `--rounds` rounds;
each process builds the same float32 inputs from the same seed, times every kernel
(`--reps` samples of ~4 ms after warm-up) and reports. Kernels are called directly,
without the autograd layer, so the numbers are the kernels' own. Torch's backward is
`autograd.grad` on a retained graph: its backward kernels plus its dispatch, as in
training. Tables give the median of all samples, in brackets the range of the
per-process medians; ratio = ours / torch (below 1 = faster than torch).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Job,
    Stats,
    alternate,
    calibrate,
    command_line,
    header,
    load_average,
    log,
    run_worker,
    stats,
    time_calls,
    write_section,
)

SHAPES = {
    # nanoGPT's CPU Shakespeare config
    "cpu-small": dict(B=12, T=64, C=128, nh=4, V=65, H=512, act="gelu", L=4),
    # GuppyLM's config
    "guppy": dict(B=8, T=128, C=384, nh=6, V=4096, H=768, act="relu", L=6),
    # for the harness's tests only
    "tiny": dict(B=2, T=8, C=16, nh=2, V=11, H=32, act="gelu", L=1),
}
SIDES = ("numba", "numpy", "torch")
# the ops the issue sets a target for (every fused kernel; the linear layer is BLAS and
# AdamW has no torch counterpart per pass): forward and backward each at least as fast
# as torch
TARGETS = (
    "softmax",
    "layernorm",
    "gelu",
    "relu",
    "cross_entropy",
    "attention",
    "embedding",
    "dropout",
)


@dataclass
class Case:
    kernel: str
    pass_: str  # "fwd", "bwd" or "step"
    fn: object
    flops: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.kernel}|{self.pass_}"


def param_count(s: dict) -> int:
    """Parameters of the GPT at this shape (tied lm_head), for the AdamW case."""
    C, H, V, T = s["C"], s["H"], s["V"], s["T"]
    per_layer = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (H * C + H) + (C * H + C)
    return V * C + T * C + s["L"] * per_layer + 2 * C


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


def build_cases(s: dict, side: str, matmuls: bool = True, seed: int = 0) -> list[Case]:
    """The cases of one side ("numba", "numpy" or "torch"). Every side draws the same
    inputs from the same seed in the same order; only the calls differ. The npllm sides
    take what a backward needs (softmax output, layernorm statistics, ...) from the NumPy
    reference forward."""
    import numpy as np

    if side == "torch":
        import torch
        import torch.nn.functional as TF
    else:
        from npllm import kernels as K

        K.use(side)

    rng = np.random.default_rng(seed)
    B, T, C, nh, V, H = s["B"], s["T"], s["C"], s["nh"], s["V"], s["H"]
    N, hs = B * T, C // nh
    cases: list[Case] = []

    def f32(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def tt(a, grad=True):
        return torch.tensor(a, requires_grad=grad)

    def tgrad(out, inputs, g):
        tg = torch.tensor(g)
        return lambda: torch.autograd.grad(out, inputs, tg, retain_graph=True)

    def ours(name, *args):
        fn = K.get(name, side)
        return lambda: fn(*args)

    def ref(name, *args):
        return K.get(name, "numpy")(*args)

    def add(kernel, fwd, bwd, flops=0.0):
        cases.append(Case(kernel, "fwd", fwd, flops))
        cases.append(Case(kernel, "bwd", bwd, 2 * flops))

    # Each kernel's inputs are made in a function of its own, so that no closure sees
    # another kernel's arrays (closures bind names, not values).
    def softmax():
        # softmax over attention-score rows (B, nh, T, T), as explicit attention has
        x, dy = f32(B * nh * T, T, scale=2.0), f32(B * nh * T, T)
        if side == "torch":
            tx = tt(x)
            add("softmax", lambda: torch.softmax(tx, -1), tgrad(torch.softmax(tx, -1), tx, dy))
        else:
            add(
                "softmax",
                ours("softmax_forward", x),
                ours("softmax_backward", dy, ref("softmax_forward", x)),
            )

    def layernorm():
        # layernorm (B*T, C)
        x, w, b, dy = f32(N, C), 1 + f32(C, scale=0.1), f32(C, scale=0.1), f32(N, C)
        if side == "torch":
            tx, tw, tb = tt(x), tt(w), tt(b)
            ln = TF.layer_norm(tx, (C,), tw, tb)
            add("layernorm", lambda: TF.layer_norm(tx, (C,), tw, tb), tgrad(ln, (tx, tw, tb), dy))
        else:
            _, mean, rstd = ref("layernorm_forward", x, w, b, 1e-5)
            add(
                "layernorm",
                ours("layernorm_forward", x, w, b, 1e-5),
                ours("layernorm_backward", dy, x, mean, rstd, w),
            )

    def activations():
        # activations on the MLP's hidden (B*T, H)
        x, dy = f32(N, H), f32(N, H)
        if side == "torch":
            tx = tt(x)

            def gelu(a):
                return TF.gelu(a, approximate="tanh")

            add("gelu", lambda: gelu(tx), tgrad(gelu(tx), tx, dy))
            add("relu", lambda: torch.relu(tx), tgrad(torch.relu(tx), tx, dy))
        else:
            add("gelu", ours("gelu_forward", x, "tanh"), ours("gelu_backward", dy, x, "tanh"))
            add("relu", ours("relu_forward", x), ours("relu_backward", dy, np.maximum(x, 0)))

    def cross_entropy():
        # fused softmax + cross-entropy on the logits (B*T, V)
        logits, targets = f32(N, V, scale=2.0), rng.integers(0, V, size=N)
        one = np.asarray(1.0, np.float32)
        if side == "torch":
            tl, tt_ = tt(logits), torch.tensor(targets)
            ce = TF.cross_entropy(tl, tt_)
            add("cross_entropy", lambda: TF.cross_entropy(tl, tt_), tgrad(ce, tl, one))
        else:
            _, lse = ref("cross_entropy_forward", logits, targets, -1)
            add(
                "cross_entropy",
                ours("cross_entropy_forward", logits, targets, -1),
                ours("cross_entropy_backward", one, logits, targets, lse, -1),
            )

    def attention():
        # causal attention (B, nh, T, hs), torch's fastest path: SDPA
        q, k, v, dy = (f32(B, nh, T, hs) for _ in range(4))
        flops = 4.0 * B * nh * T * T * hs
        if side == "torch":
            tq, tk, tv = tt(q), tt(k), tt(v)

            def sdpa():
                return TF.scaled_dot_product_attention(tq, tk, tv, is_causal=True)

            add("attention", sdpa, tgrad(sdpa(), (tq, tk, tv), dy), flops)
        else:
            _, att = ref("attention_forward", q, k, v, True)
            add(
                "attention",
                ours("attention_forward", q, k, v, True),
                ours("attention_backward", dy, q, k, v, att, True),
                flops,
            )

    def embedding():
        # the token table
        idx, w, dy = rng.integers(0, V, size=N), f32(V, C), f32(N, C)
        if side == "torch":
            tw, ti = tt(w), torch.tensor(idx)
            emb = TF.embedding(ti, tw)
            add("embedding", lambda: TF.embedding(ti, tw), tgrad(emb, tw, dy))
        else:
            add(
                "embedding",
                ours("embedding_forward", idx, w),
                ours("embedding_backward", dy, idx, V),
            )

    def dropout():
        # dropout p=0.1 on the residual stream, drawing the mask included
        x, dy = f32(N, C), f32(N, C)
        drng = np.random.default_rng(1)
        if side == "torch":
            tx = tt(x)
            add(
                "dropout",
                lambda: TF.dropout(tx, 0.1, True),
                tgrad(TF.dropout(tx, 0.1, True), tx, dy),
            )
        else:
            _, keep = ref("dropout_forward", x, drng.random(x.shape, np.float32), 0.1)
            fwd = K.get("dropout_forward", side)
            add(
                "dropout",
                lambda: fwd(x, drng.random(x.shape, dtype=np.float32), 0.1),
                ours("dropout_backward", dy, keep, 0.1),
            )

    def linear():
        # the MLP's first layer, bias included
        x, w, b, dy = f32(N, C), f32(H, C, scale=0.05), f32(H), f32(N, H)
        flops = 2.0 * N * C * H
        if side == "torch":
            tx, tw, tb = tt(x), tt(w), tt(b)
            lin = TF.linear(tx, tw, tb)
            add(
                "linear (mlp.c_fc)",
                lambda: TF.linear(tx, tw, tb),
                tgrad(lin, (tx, tw, tb), dy),
                flops,
            )
        else:
            add(
                "linear (mlp.c_fc)",
                ours("linear_forward", x, w, b),
                ours("linear_backward", dy, x, w, True, True, True),
                flops,
            )

    def adamw():
        # AdamW over every parameter as one flat buffer; torch.optim.AdamW's defaults
        n = param_count(s)
        p, g = f32(n, scale=0.02), f32(n, scale=1e-3)
        name = f"adamw ({n / 1e6:.2f}M params)"
        if side == "torch":
            tp = torch.tensor(p, requires_grad=True)
            tp.grad = torch.tensor(g)
            opt = torch.optim.AdamW([tp], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
            cases.append(Case(name, "step", opt.step))
        else:
            m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
            cases.append(
                Case(name, "step", ours("adamw_update", p, g, m, v, 1e-3, 0.9, 0.99, 1e-8, 0.1, 10))
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
    if matmuls:
        cases += matmul_cases(s, side, rng)
    return cases


def matmul_cases(s: dict, side: str, rng) -> list[Case]:
    """Every linear layer's matmuls without bias, as the kernels compute them: forward
    x @ w.T; backward dx = dy @ w and dw = dy.T @ x. The numpy side is numpy's BLAS;
    then a large square GEMM, the BLAS peak."""
    import numpy as np

    if side == "torch":
        import torch
    else:
        from npllm import kernels as K

    def make(x, w, dy):
        if side == "torch":
            tx, tw, tdy = torch.tensor(x), torch.tensor(w), torch.tensor(dy)
            return (lambda: tx @ tw.T), (lambda: (tdy @ tw, tdy.T @ tx))
        lf, lb = K.get("linear_forward", side), K.get("linear_backward", side)
        return (lambda: lf(x, w, None)), (lambda: lb(dy, x, w, True, True, False))

    out = []
    for name, N, cin, cout in [*linear_shapes(s), ("peak 1024^3", 1024, 1024, 1024)]:
        x = rng.standard_normal((N, cin)).astype(np.float32)
        w = rng.standard_normal((cout, cin)).astype(np.float32)
        dy = rng.standard_normal((N, cout)).astype(np.float32)
        flops = 2.0 * N * cin * cout
        fwd, bwd = make(x, w, dy)
        out.append(Case("matmul " + name, "fwd", fwd, flops))
        if not name.startswith("peak"):
            out.append(Case("matmul " + name, "bwd", bwd, 2 * flops))
    return out


def kernel_worker(spec: dict) -> dict:
    """One side's process: time every case, `reps` samples each after warm-up."""
    side = spec["framework"]
    if side == "torch":
        import torch  # noqa: F401  (this process never loads npllm)
    else:
        import npllm  # noqa: F401
    only = spec.get("only") or []
    cases = [
        c
        for c in build_cases(SHAPES[spec["shape"]], side, spec["matmul"])
        if not only or any(o in c.kernel for o in only)
    ]
    samples, flops = {}, {}
    for case in cases:
        inner = calibrate(case.fn)
        samples[case.key] = time_calls(case.fn, spec["reps"], warmup=0, inner=inner)
        flops[case.key] = case.flops
    return {"samples": samples, "flops": flops}


WORKERS = {"kernels": kernel_worker}


# ---- tables ------------------------------------------------------------------------------
def ms(s: Stats, digits: int = 3) -> str:
    rm = s.run_medians
    return f"{1e3 * s.median:.{digits}f} ({1e3 * min(rm):.{digits}f}-{1e3 * max(rm):.{digits}f})"


def rel(a: Stats, b: Stats) -> str:
    per_round = [x / y for x, y in zip(a.run_medians, b.run_medians)]
    return f"{a.median / b.median:.2f} ({min(per_round):.2f}-{max(per_round):.2f})"


def tables(results: dict[str, list[dict]]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(per-kernel fwd+bwd summary, per-pass rows, matmul GFLOP/s rows, target verdicts)."""
    keys = list(results["torch"][0]["samples"])
    st = {side: {k: stats(results[side], k) for k in keys} for side in SIDES}
    passes = [
        "| kernel | pass | Numba ms | NumPy ms | torch ms | Numba/torch | NumPy/torch |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = [
        "| kernel | fwd+bwd Numba ms | NumPy ms | torch ms | Numba/torch | NumPy/torch |",
        "|---|---|---|---|---|---|",
    ]
    gemm = [
        "| matmul | pass | BLAS (numpy side) GFLOP/s | Numba side GFLOP/s | torch GFLOP/s | "
        "Numba side / torch |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    kernels = [k for k in dict.fromkeys(key.split("|")[0] for key in keys)]
    for kernel in kernels:
        kkeys = [k for k in keys if k.split("|")[0] == kernel]
        if kernel.startswith("matmul "):
            for key in kkeys:
                flops = results["torch"][0]["flops"][key]
                gf = {side: st[side][key].map(lambda t, f=flops: f / t / 1e9) for side in SIDES}

                def g(x: Stats) -> str:
                    rm = x.run_medians
                    return f"{x.median:.0f} ({min(rm):.0f}-{max(rm):.0f})"

                gemm.append(
                    f"| {kernel[7:]} | {key.split('|')[1]} | {g(gf['numpy'])} | "
                    f"{g(gf['numba'])} | {g(gf['torch'])} | {rel(gf['numba'], gf['torch'])} |"
                )
            continue
        for key in kkeys:
            row = st["numba"][key], st["numpy"][key], st["torch"][key]
            passes.append(
                f"| {kernel} | {key.split('|')[1]} | {ms(row[0])} | {ms(row[1])} | "
                f"{ms(row[2])} | {rel(row[0], row[2])} | {rel(row[1], row[2])} |"
            )
            if kernel in TARGETS:
                r = row[0].median / row[2].median
                verdicts.append(
                    f"{kernel} {key.split('|')[1]} {r:.2f}{'' if r <= 1.0 else ' (NOT met)'}"
                )
        if len(kkeys) > 1:  # fwd + bwd: sum the per-run medians of both passes
            tot = {
                side: Stats([[sum(x) for x in zip(*(st[side][k].run_medians for k in kkeys))]])
                for side in SIDES
            }
            summary.append(
                f"| {kernel}{' (target)' if kernel in TARGETS else ''} | "
                f"{1e3 * tot['numba'].median:.3f} | {1e3 * tot['numpy'].median:.3f} | "
                f"{1e3 * tot['torch'].median:.3f} | "
                f"{tot['numba'].median / tot['torch'].median:.2f} | "
                f"{tot['numpy'].median / tot['torch'].median:.2f} |"
            )
    return summary, passes, gemm, verdicts


def shape_label(name: str) -> str:
    s = SHAPES[name]
    return (
        f"{name}: B={s['B']} T={s['T']} C={s['C']} nh={s['nh']} V={s['V']} "
        f"MLP {s['H']} {s['act'].upper()}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--worker":
        return run_worker(argv, WORKERS)
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
    ap.add_argument("--rounds", type=int, default=3, help="processes per implementation")
    ap.add_argument("--reps", type=int, default=15, help="samples per kernel per process")
    ap.add_argument("--no-matmul", action="store_true", help="skip the GFLOP/s table")
    ap.add_argument(
        "--jit", action="store_true", help="also measure cold start (benchmarks/cold_start.py)"
    )
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)  # another RESULTS.md
    args = ap.parse_args(argv)
    shapes = args.shape or ["cpu-small", "guppy"]
    load0 = load_average()
    out, everything = [], {}
    for name in shapes:
        log(f"== {name}")
        spec = {"shape": name, "reps": args.reps, "only": args.only, "matmul": not args.no_matmul}
        jobs = [Job(side, "kernels", {"framework": side, **spec}) for side in SIDES]
        results = alternate(Path(__file__), jobs, args.rounds)
        for label, runs in results.items():
            everything.setdefault(label, []).extend(runs)
        summary, passes, gemm, verdicts = tables(results)
        part = [f"### {shape_label(name)}", ""]
        if verdicts:
            part += [
                "Targets (Numba, each pass, ratio to torch <= 1): " + ", ".join(verdicts) + ".",
                "",
            ]
        part += ["Forward + backward per kernel (sum of the passes' medians):", "", *summary, ""]
        part += [
            "Each pass, ms per call, median (range of the per-process medians):",
            "",
            *passes,
            "",
        ]
        if len(gemm) > 2:
            part += ["Matmuls (GFLOP/s, higher is better):", "", *gemm, ""]
        print("\n".join(part), flush=True)
        out += part
    if args.jit:
        from benchmarks.cold_start import cold_start_table

        rows, _ = cold_start_table(rounds=1)
        part = ["### Cold start", "", *rows, ""]
        print("\n".join(part), flush=True)
        out += part
    head = header(
        everything,
        (load0, load_average()),
        command_line("kernels.py", argv),
        f"float32; {args.rounds} rounds of one process per implementation (numba, numpy, "
        "torch), alternating; in brackets the range of the per-process medians.",
    )
    print(head)
    if args.write or args.results:
        write_section(
            "Kernels", head + "\n" + "\n".join(out), *([args.results] if args.results else [])
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
