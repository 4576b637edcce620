"""`npllm quantize RUN`: write an int8 weight-only copy of a run's checkpoint (the `int8`
checkpoint beside `best` and `last`, loaded by `npllm sample --quantized`), and report the
weight bytes before and after and the val loss of both models on the same batches.

The scheme is `npllm.quant`'s: per-output-channel symmetric int8 for every Linear of the
blocks and (unless `--no-embedding`) the tied token embedding / lm_head; the rest stays
float32. The checkpoint is written with `npllm.checkpoint`, so it is as crash-safe and
pickle-free as the others.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder of `npllm train`")
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "last"),
        help="which checkpoint to quantize (default best)",
    )
    p.add_argument(
        "--no-embedding",
        dest="embedding",
        action="store_false",
        help="keep the token embedding (and the tied lm_head) in float32",
    )
    p.add_argument(
        "--eval-iters",
        type=int,
        default=20,
        metavar="N",
        help="val batches for the loss comparison (default 20; 0: skip it)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="B",
        help="sequences per evaluation batch (default 8)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation batches")


def val_loss(decoder, data, n_batches: int, batch_size: int, seed: int) -> float:
    """Mean next-token cross-entropy of a `Decoder` over `n_batches` random val windows."""
    import numpy as np

    from npllm import kernels
    from npllm.data import get_batch

    rng = np.random.default_rng(seed)
    T = decoder.config.block_size
    losses = []
    for _ in range(n_batches):
        x, y = get_batch(data, batch_size, T, rng)
        logits = decoder.forward(x)  # (B, T, V)
        loss, _ = kernels.cross_entropy_forward(
            np.ascontiguousarray(logits.reshape(-1, logits.shape[-1])), y.reshape(-1), -1
        )
        losses.append(float(loss))
    return float(np.mean(losses))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from npllm.checkpoint import load_checkpoint, save_checkpoint
    from npllm.errors import ConfigError
    from npllm.generate import Decoder
    from npllm.gpt import GPTConfig
    from npllm.quant import load_weights, quantize_state_dict, weight_bytes
    from npllm.runs import QUANTIZED_NAME

    if args.eval_iters < 0 or args.batch_size < 1:
        raise ConfigError("--eval-iters must be >= 0 and --batch-size >= 1")
    ck = load_checkpoint(args.run, args.checkpoint)
    config = GPTConfig(**ck.info["model_config"])
    qsd = quantize_state_dict(ck.model_state, embedding=args.embedding)
    info = {
        k: v
        for k, v in ck.info.items()
        if k in ("model_config", "tokenizer", "data", "iter", "best_val_loss")
    }
    info["quantization"] = {
        "scheme": "int8 per-output-channel symmetric, weight-only",
        "embedding": args.embedding,
        "source": args.checkpoint,
    }
    path = save_checkpoint(args.run, QUANTIZED_NAME, qsd, None, info)

    wf, wq = load_weights(ck.model_state), load_weights(qsd)
    lin_f, lin_q = weight_bytes(wf, linear_only=True), weight_bytes(wq, linear_only=True)
    all_f, all_q = weight_bytes(wf), weight_bytes(wq)
    print(f"wrote {path}")
    print(
        f"quantized weights: {lin_f / 1e6:.2f} MB -> {lin_q / 1e6:.2f} MB "
        f"({lin_f / lin_q:.2f}x smaller); all weights {all_f / 1e6:.2f} MB -> "
        f"{all_q / 1e6:.2f} MB ({all_f / all_q:.2f}x)"
    )

    data_dir = Path(ck.info.get("data", {}).get("dir", ""))
    if args.eval_iters and (data_dir / "val.bin").exists():
        from npllm.data import load_split

        val = load_split(data_dir, "val")
        before = val_loss(Decoder(config, wf), val, args.eval_iters, args.batch_size, args.seed)
        after = val_loss(Decoder(config, wq), val, args.eval_iters, args.batch_size, args.seed)
        print(
            f"val loss ({args.eval_iters} batches of {args.batch_size}): float32 "
            f"{before:.4f}, int8 {after:.4f} ({after - before:+.4f})"
        )
    elif args.eval_iters:
        print(f"val loss not compared: the run's data folder {data_dir} has no val.bin")
    return 0
