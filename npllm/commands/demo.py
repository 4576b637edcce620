"""`npllm demo`: a two-layer MLP learns XOR with nothing but `Tensor` ops and a
hand-written SGD step, printing the loss as it falls."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1000, help="SGD steps (default 1000)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--hidden", type=int, default=8, help="hidden units (default 8)")
    p.add_argument("--seed", type=int, default=0)


def xor_mlp(hidden: int, seed: int):
    """The data and initial parameters of the XOR problem, float32."""
    import numpy as np

    from npllm import Tensor

    rng = np.random.default_rng(seed)
    x = Tensor(np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32))
    y = Tensor(np.array([[0], [1], [1], [0]], dtype=np.float32))
    params = [
        Tensor(rng.normal(0, 1.0, (2, hidden)).astype(np.float32), requires_grad=True),
        Tensor(np.zeros(hidden, dtype=np.float32), requires_grad=True),
        Tensor(rng.normal(0, 0.5, (hidden, 1)).astype(np.float32), requires_grad=True),
        Tensor(np.zeros(1, dtype=np.float32), requires_grad=True),
    ]
    return x, y, params


def mse(x, y, w1, b1, w2, b2):
    """Mean squared error of tanh(x @ w1 + b1) @ w2 + b2 against y."""
    pred = (x @ w1 + b1).tanh() @ w2 + b2
    return ((pred - y) ** 2).mean()


def run(args: argparse.Namespace) -> int:
    from npllm.errors import ConfigError

    if args.steps < 1 or args.hidden < 1 or not args.lr > 0:
        raise ConfigError("--steps and --hidden must be >= 1 and --lr > 0")
    x, y, params = xor_mlp(args.hidden, args.seed)
    every = max(args.steps // 10, 1)
    for step in range(args.steps + 1):
        loss = mse(x, y, *params)
        if step % every == 0 or step == args.steps:
            print(f"step {step:5d}  loss {loss.item():.6f}")
        if step == args.steps:
            break
        for p in params:
            p.grad = None
        loss.backward()
        for p in params:
            p.data -= args.lr * p.grad
    pred = (x @ params[0] + params[1]).tanh() @ params[2] + params[3]
    print("xor predictions:", " ".join(f"{v:.3f}" for v in pred.data.ravel()))
    return 0
