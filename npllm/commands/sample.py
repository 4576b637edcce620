"""`npllm sample`: print text from a run's best checkpoint (or `--checkpoint last`, or the
int8 one of `npllm quantize` with `--quantized`), generated with `npllm.generate.stream`
(KV cache, temperature, top-k, top-p, repetition penalty, greedy); `--stream` prints each
token as it comes. `--stop TEXT` ends the text after the first occurrence of TEXT (checked
on the decoded text, so it works whatever the tokenizer's token boundaries).
`--regex R` or `--json-schema FILE` constrain the text to match R or to be JSON valid
against the schema in FILE (`npllm.constrain`); generation ends when it is complete."""

from __future__ import annotations

import argparse


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """--run, --checkpoint, --quantized: which model of a run, for every command that
    loads one (`npllm.runs.load_run`)."""
    p.add_argument("--run", required=True, metavar="RUN", help="a run folder of `npllm train`")
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "last"),
        help="which checkpoint of the run (default best)",
    )
    p.add_argument(
        "--quantized",
        action="store_true",
        help="use the run's int8 checkpoint written by `npllm quantize`",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=500,
        metavar="N",
        help="tokens to generate (default 500)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        metavar="T",
        help="below 1 sharpens, above 1 flattens; 0 is greedy (default 0.8)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=200,
        metavar="K",
        help="sample among the K most likely tokens (default 200; 0: all)",
    )
    p.add_argument("--seed", type=int, default=1337, metavar="S", help="sampling seed")
    p.add_argument(
        "--top-p",
        type=float,
        default=None,
        metavar="P",
        help="nucleus sampling: the smallest top set with probability >= P",
    )
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="CTRL penalty on tokens already in the context (default 1: off)",
    )
    p.add_argument("--greedy", action="store_true", help="always the most likely token")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="end after this text (backslash escapes such as \\n work; repeatable)",
    )
    add_constraint_arguments(p)


def add_constraint_arguments(p: argparse.ArgumentParser) -> None:
    """--regex / --json-schema, for every command that generates."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--regex",
        metavar="R",
        help="the output must fully match the regex R (literals, classes, . * + ? {m,n} | ( ))",
    )
    group.add_argument(
        "--json-schema",
        metavar="FILE",
        help="the output must be JSON valid against the JSON Schema in FILE",
    )


def read_json_schema(path: str | None):
    """The schema in the file `path` (None: no schema), as a dict or a boolean."""
    import json

    from npllm.errors import ConfigError

    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read --json-schema {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--json-schema {path} is not valid JSON: {e}") from None


def run(args: argparse.Namespace) -> int:
    import sys

    from npllm.constrain.index import end_ids
    from npllm.errors import ConfigError, DataError
    from npllm.generate import stream
    from npllm.runs import load_run

    if args.top_k < 0:
        raise ConfigError(f"--top-k must be >= 0, got {args.top_k}")
    loaded = load_run(args.run, args.checkpoint, quantized=args.quantized)
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise DataError("the prompt is empty; pass some text with --prompt")
    block_size = model.config.block_size
    if len(prompt) > block_size:
        print(
            f"npllm sample: warning: the prompt is {len(prompt)} tokens, longer than the "
            f"context of {block_size}; only its last {block_size} are used",
            file=sys.stderr,
        )
        prompt = prompt[-block_size:]
    # backslash escapes (\n, \t, \u00e9) as Python reads them; other characters as given
    stops = [s.encode("latin-1", "backslashreplace").decode("unicode_escape") for s in args.stop]
    if any(not s for s in stops):
        raise ConfigError("--stop needs a non-empty text")
    out, new_ids, shown = sys.stdout, [], 0
    # under a constraint, the end-of-output special ends the text and is not shown
    ends = set(end_ids(tokenizer)) if args.regex or args.json_schema else set()
    out.write(args.prompt)
    text = ""
    for token in stream(
        model,
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        greedy=args.greedy,
        seed=args.seed,
        regex=args.regex,
        json_schema=read_json_schema(args.json_schema),
        tokenizer=tokenizer,
    ):
        if token in ends:
            break
        new_ids.append(token)
        # Decode everything generated so far: a BPE token may end inside a UTF-8
        # character, which shows as U+FFFD until the next token completes it.
        text = tokenizer.decode(new_ids)
        ends = [text.find(s) + len(s) for s in stops if s in text]
        if ends:
            text = text[: min(ends)]
        ready = len(text.rstrip("\ufffd"))
        if args.stream and ready > shown:
            out.write(text[shown:ready])
            out.flush()
            shown = ready
        if ends:
            break
    out.write(text[shown:] + "\n")
    return 0
