"""`npllm sample`: print text from a run's best checkpoint (or `--checkpoint last`),
streamed token by token with `npllm.generate.stream` (KV cache, temperature, top-k)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN", help="a run folder of `npllm train`")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500, metavar="N",
                   help="tokens to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="below 1 sharpens, above 1 flattens; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=200, metavar="K",
                   help="sample among the K most likely tokens (default 200; 0: all)")
    p.add_argument("--seed", type=int, default=1337, metavar="S", help="sampling seed")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"),
                   help="which checkpoint of the run (default best)")


def load_model(run_dir: str, name: str = "best"):
    """(GPT in eval mode, tokenizer) from a run folder's checkpoint `name`."""
    from npllm.checkpoint import load_checkpoint
    from npllm.errors import CheckpointError
    from npllm.gpt import GPT, GPTConfig
    from npllm.tokenizers import tokenizer_from_dict

    ck = load_checkpoint(run_dir, name)
    try:
        model = GPT(GPTConfig(**ck.info["model_config"]))
        tokenizer = tokenizer_from_dict(ck.info["tokenizer"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"the checkpoint in {run_dir} lacks {e}; it is corrupt") from None
    model.load_state_dict(ck.model_state)
    model.eval()
    return model, tokenizer


def run(args: argparse.Namespace) -> int:
    import sys

    from npllm.errors import ConfigError, DataError
    from npllm.generate import stream

    if args.top_k < 0:
        raise ConfigError(f"--top-k must be >= 0, got {args.top_k}")
    model, tokenizer = load_model(args.run, args.checkpoint)
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise DataError("the prompt is empty; pass some text with --prompt")
    out, new_ids, shown = sys.stdout, [], 0
    out.write(args.prompt)
    for token in stream(model, prompt, args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k or None, seed=args.seed):
        new_ids.append(token)
        # Decode everything generated so far: a BPE token may end inside a UTF-8
        # character, which shows as U+FFFD until the next token completes it.
        text = tokenizer.decode(new_ids)
        ready = len(text.rstrip("\ufffd"))
        if ready > shown:
            out.write(text[shown:ready])
            out.flush()
            shown = ready
    out.write(tokenizer.decode(new_ids)[shown:] + "\n")
    return 0
