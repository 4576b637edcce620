"""`npllm quantize RUN [--bits 4 [--group-size 32] [--asymmetric]]`: write a weight-only
quantized copy of a run's checkpoint (the `int8` or `int4` checkpoint beside `best` and
`last`; `npllm sample/chat/serve --quantized` load the one written last), and report the
weight bytes before and after, and on the same val batches the loss of both models and how
often their most likely next tokens agree.

The schemes are `npllm.quant`'s: per-output-channel symmetric int8, or 4-bit blocks of
`--group-size` inputs (llama.cpp's Q4_0 rule, or Q4_1's with `--asymmetric`), for every
Linear of the blocks, and (unless `--no-embedding`) the tied token embedding / lm_head;
the rest stays float32. With `--bits 4` the embedding / lm_head stays int8 unless
`--embedding-bits 4`: it is both the input table and the output layer, whose error goes
straight into the logits, and it is one matrix where the blocks have many (benchmarks/
RESULTS.md, "Quantization": int4 there costs more val loss than all the blocks' int4
Linears together, for a few percent of the bytes). The checkpoint is written with
`npllm.checkpoint`, so it is as crash-safe and pickle-free as the others.
"""

from __future__ import annotations

import argparse

GROUP_SIZES = (32, 64, 128)  # npllm.quant.GROUP_SIZES (not imported: it loads NumPy)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder of `npllm train`")
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "last"),
        help="which checkpoint to quantize (default best)",
    )
    p.add_argument(
        "--bits",
        type=int,
        default=8,
        choices=(8, 4),
        help="8: int8 per output channel (default); 4: 4-bit blocks",
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=32,
        choices=GROUP_SIZES,
        metavar="G",
        help="with --bits 4: inputs per block sharing a scale, 32 (default), 64 or 128",
    )
    p.add_argument(
        "--asymmetric",
        action="store_true",
        help="with --bits 4: a scale and a minimum per block (Q4_1-like) instead of a scale",
    )
    p.add_argument(
        "--embedding-bits",
        type=int,
        default=8,
        choices=(8, 4),
        help="with --bits 4: the token embedding / lm_head in int8 (default) or int4",
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


def evaluate(decoder, data, n_batches: int, batch_size: int, seed: int):
    """(mean next-token cross-entropy, most likely next token at every position counted)
    of a `Decoder` over `n_batches` random val windows (the same for the same seed).
    `data` is a token array, or a chat split (tokens, mask, starts) of
    `npllm.chat_data.load_chat_split`: then windows start at conversations and only the
    assistant's tokens count, as in training's val loss."""
    import numpy as np

    from npllm import kernels
    from npllm.data import get_batch

    rng = np.random.default_rng(seed)
    T = decoder.config.block_size
    if isinstance(data, tuple):
        from npllm.chat_data import get_chat_batch, window_starts

        tokens, mask, starts = data
        starts = window_starts(tokens, starts, T, "val")

        def batch():
            return get_chat_batch(tokens, mask, starts, batch_size, T, rng)
    else:

        def batch():
            return get_batch(data, batch_size, T, rng)

    losses, top = [], []
    for _ in range(n_batches):
        x, y = batch()
        logits = decoder.forward(x)  # (B, T, V)
        loss, _ = kernels.cross_entropy_forward(
            np.ascontiguousarray(logits.reshape(-1, logits.shape[-1])), y.reshape(-1), -1
        )
        losses.append(float(loss))
        top.append(logits.argmax(-1)[y >= 0])
    return float(np.mean(losses)), np.concatenate(top) if top else np.zeros(0, np.int64)


def val_loss(decoder, data, n_batches: int, batch_size: int, seed: int) -> float:
    """Mean next-token cross-entropy of a `Decoder` over `n_batches` random val windows."""
    return evaluate(decoder, data, n_batches, batch_size, seed)[0]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from npllm.checkpoint import load_checkpoint, save_checkpoint
    from npllm.decoder import Decoder
    from npllm.errors import ConfigError
    from npllm.gpt import GPTConfig
    from npllm.quant import load_weights, quantize_state_dict, weight_bytes
    from npllm.runs import QUANTIZED_NAMES

    if args.eval_iters < 0 or args.batch_size < 1:
        raise ConfigError("--eval-iters must be >= 0 and --batch-size >= 1")
    ck = load_checkpoint(args.run, args.checkpoint)
    config = GPTConfig(**ck.info["model_config"])
    qsd = quantize_state_dict(
        ck.model_state,
        embedding=args.embedding,
        bits=args.bits,
        group_size=args.group_size,
        symmetric=not args.asymmetric,
        embedding_bits=args.embedding_bits,
    )
    info = {
        k: v
        for k, v in ck.info.items()
        if k in ("model_config", "tokenizer", "data", "iter", "best_val_loss")
    }
    if args.bits == 8:
        scheme = "int8 per-output-channel symmetric, weight-only"
    else:
        rule = "asymmetric (scale and minimum)" if args.asymmetric else "symmetric (Q4_0)"
        scheme = f"int4 blocks of {args.group_size}, {rule}, weight-only"
    info["quantization"] = {
        "scheme": scheme,
        "bits": args.bits,
        "group_size": args.group_size if args.bits == 4 else None,
        "symmetric": not args.asymmetric if args.bits == 4 else True,
        "embedding": args.embedding,
        "embedding_bits": (args.embedding_bits if args.bits == 4 else 8) if args.embedding else 32,
        "source": args.checkpoint,
    }
    path = save_checkpoint(args.run, QUANTIZED_NAMES[args.bits], qsd, None, info)

    wf, wq = load_weights(ck.model_state), load_weights(qsd)
    lin_f, lin_q = weight_bytes(wf, linear_only=True), weight_bytes(wq, linear_only=True)
    all_f, all_q = weight_bytes(wf), weight_bytes(wq)
    print(f"wrote {path} ({scheme})")
    print(
        f"quantized weights: {lin_f / 1e6:.2f} MB -> {lin_q / 1e6:.2f} MB "
        f"({lin_f / lin_q:.2f}x smaller); all weights {all_f / 1e6:.2f} MB -> "
        f"{all_q / 1e6:.2f} MB ({all_f / all_q:.2f}x)"
    )

    data_dir = Path(ck.info.get("data", {}).get("dir", ""))
    if args.eval_iters and (data_dir / "val.bin").exists():
        from npllm.chat_data import load_chat_split
        from npllm.data import load_split

        chat = (data_dir / "val_mask.bin").exists()  # chat data: assistant tokens only
        val = load_chat_split(data_dir, "val") if chat else load_split(data_dir, "val")
        n, bs, seed = args.eval_iters, args.batch_size, args.seed
        before, top_f = evaluate(Decoder(config, wf), val, n, bs, seed)
        after, top_q = evaluate(Decoder(config, wq), val, n, bs, seed)
        label = f"int{args.bits}"
        what = "assistant-token val loss" if chat else "val loss"
        print(
            f"{what} ({n} batches of {bs}): float32 {before:.4f}, {label} {after:.4f} "
            f"({after - before:+.4f}); most likely next token the same at "
            f"{(top_f == top_q).mean():.1%} of {top_f.size} {'assistant ' if chat else ''}"
            "positions"
        )
    elif args.eval_iters:
        print(f"val loss not compared: the run's data folder {data_dir} has no val.bin")
    return 0
