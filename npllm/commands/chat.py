"""`npllm chat --run RUN`: talk to a chat model in the terminal.

Each line on standard input is a user message; the reply streams as it is generated
(`npllm.chat.ChatSession` over `npllm.generate.stream`) and ends at `<|im_end|>`; when it
stops at the token limit instead, a note on stderr says so. `/reset` starts a new
conversation, `/quit` (or end of input) leaves. Ctrl-C during a reply stops that reply
and returns to the prompt. When the history outgrows the context window, the oldest
exchanges are dropped and a note says so once. `--prompt TEXT` asks one question, prints
the answer and exits (for scripts). `--eval DATA` measures, over the held-out
conversations of a chat data folder, how often greedy replies end with `<|im_end|>`.
`--json-schema FILE` (or `--regex R`) makes every reply JSON valid against the schema
(or a full match of R); `<|im_end|>` is then allowed only once the reply is complete."""

from __future__ import annotations

import argparse

from npllm.commands.sample import add_constraint_arguments, add_run_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message")
    p.add_argument(
        "--prompt",
        default=None,
        metavar="TEXT",
        help="ask this one question, print the reply, exit",
    )
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        metavar="N",
        help="longest reply in tokens (default 256)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        metavar="T",
        help="below 1 sharpens, above 1 flattens; 0 is greedy (default 0.7)",
    )
    g.add_argument(
        "--top-k",
        type=int,
        default=50,
        metavar="K",
        help="sample among the K most likely tokens (default 50; 0: all)",
    )
    g.add_argument(
        "--top-p",
        type=float,
        default=None,
        metavar="P",
        help="nucleus sampling: the smallest top set with probability >= P",
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="CTRL penalty on tokens already in the context (default 1: off)",
    )
    g.add_argument("--greedy", action="store_true", help="always the most likely token")
    g.add_argument("--seed", type=int, default=None, metavar="S", help="sampling seed")
    p.add_argument(
        "--eval",
        default=None,
        metavar="DATA",
        help="instead of chatting: greedy replies to the first user turns of a chat data "
        "folder's val.jsonl (those unseen in training first); prints the share that end "
        "with <|im_end|>",
    )
    p.add_argument(
        "--eval-n", type=int, default=200, metavar="N", help="prompts for --eval (default 200)"
    )
    add_constraint_arguments(p)


def _sampling(args: argparse.Namespace) -> dict:
    """The sampling keywords of `npllm.generate.stream`, checked."""
    from npllm.errors import ConfigError
    from npllm.sampling import check_sampling_args

    if args.top_k < 0:
        raise ConfigError(f"--top-k must be >= 0, got {args.top_k}")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    check_sampling_args(args.temperature, args.top_k or None, args.top_p, args.repetition_penalty)
    return dict(
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        greedy=args.greedy,
        seed=args.seed,
    )


def _load(args: argparse.Namespace):
    """(model or int8 `Decoder`, tokenizer) of the run, as `npllm sample` loads them."""
    from npllm.runs import load_run

    loaded = load_run(args.run, args.checkpoint, quantized=args.quantized)
    return loaded.model, loaded.tokenizer


def _say(session, text: str, out, err) -> None:
    """Stream one reply; Ctrl-C stops it (the part said stays in the history)."""
    gen = session.reply(text)
    try:
        for piece in gen:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        gen.close()
        out.write("\n")
        print("[reply stopped]", file=err)
        return
    out.write("\n")
    out.flush()
    if session.finish_reason == "length":
        print(
            f"[reply cut at the limit of {session.max_new_tokens} tokens; "
            "--max-new-tokens raises it]",
            file=err,
        )


def chat_loop(session, inp, out, err, interactive: bool) -> None:
    """The REPL: one message per line of `inp`."""
    from npllm.errors import DataError

    told = False
    if interactive:
        print("Chatting with the model: /reset starts again, /quit leaves.", file=err)
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        try:
            line = inp.readline()
        except KeyboardInterrupt:
            out.write("\n")
            print("(/quit or Ctrl-D leaves)", file=err)
            continue
        if not line:
            break
        text = line.rstrip("\n")
        command = text.strip()
        if command == "/quit":
            break
        if command == "/reset":
            session.reset()
            print("[new conversation]", file=err)
            continue
        if not command:
            continue
        try:
            session.prompt(text)  # drops the oldest turns if needed; the reply reuses it
        except DataError as e:
            print(f"npllm chat: {e}", file=err)
            continue
        if session.trimmed and not told:
            print(
                f"[the conversation is longer than the model's context of "
                f"{session.block_size} tokens: the oldest turns are dropped from now on]",
                file=err,
            )
            told = True
        _say(session, text, out, err)


def run(args: argparse.Namespace) -> int:
    import sys

    from npllm.chat import ChatSession
    from npllm.commands.sample import read_json_schema
    from npllm.constrain import compile_grammar
    from npllm.errors import ConfigError

    sampling = _sampling(args)
    if args.eval is not None:
        if args.prompt is not None:
            raise ConfigError("pass --prompt or --eval, not both")
        return evaluate(args)
    model, tokenizer = _load(args)
    grammar = compile_grammar(  # built once, for every reply
        regex=args.regex,
        json_schema=read_json_schema(args.json_schema),
        tokenizer=tokenizer,
        vocab_size=model.config.vocab_size,
    )
    if grammar is not None:
        sampling["grammar"] = grammar
    session = ChatSession(
        model,
        tokenizer,
        system=args.system,
        max_new_tokens=args.max_new_tokens,
        **sampling,
    )
    if args.prompt is not None:
        session.prompt(args.prompt)  # a message too long is an error before any output
        _say(session, args.prompt, sys.stdout, sys.stderr)
        return 0
    chat_loop(session, sys.stdin, sys.stdout, sys.stderr, sys.stdin.isatty())
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """`--eval DATA`: the stop rate of greedy replies to held-out first user turns."""
    import json
    from pathlib import Path

    from npllm.chat import stop_rate
    from npllm.chat_data import CHAT_DEMO
    from npllm.chat_demo import PARAPHRASES, same_topic, topic_answers
    from npllm.data import load_meta
    from npllm.errors import ConfigError, DataError

    if args.eval_n < 1:
        raise ConfigError(f"--eval-n must be >= 1, got {args.eval_n}")
    path = Path(args.eval) / "val.jsonl"
    if not path.is_file():
        raise DataError(f"no {path}; pass a folder written by `npllm prepare --chat`")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    records.sort(key=lambda r: not r.get("unseen", False))  # stable: unseen ones first
    chosen = records[: args.eval_n]
    unseen = sum(bool(r.get("unseen")) for r in chosen)
    model, tokenizer = _load(args)
    result = stop_rate(model, tokenizer, [r["messages"] for r in chosen], args.max_new_tokens)
    rows = result["rows"]
    same = sum(r["reply"] == r["reference"] for r in rows)
    topical = [same_topic(r["reply"], r["reference"]) for r in rows]
    known = [t for t in topical if t is not None]
    mean_len = sum(len(tokenizer.encode(r["reply"])) for r in rows) / len(rows)
    for r in rows[:5]:
        print(f"> {r['prompt'][-1]['content']}\n{r['reply']}{'' if r['ended'] else ' [limit]'}\n")
    print(
        f"{result['n']} held-out prompts ({unseen} whose user message never occurs in "
        f"training), greedy: {result['stopped']} replies ({100 * result['rate']:.1f}%) ended "
        f"with <|im_end|>, {result['n'] - result['stopped']} reached {args.max_new_tokens} "
        f"tokens; {same} equal the reference reply word for word"
        + (
            f", {sum(known)} of {len(known)} are an answer of chat-demo's topic for the question"
            if known
            else ""
        )
        + f"; mean reply {mean_len:.1f} tokens"
    )
    if load_meta(args.eval).get("corpus") == CHAT_DEMO:
        para = stop_rate(
            model,
            tokenizer,
            [[{"role": "user", "content": q}] for _, q in PARAPHRASES],
            args.max_new_tokens,
        )
        on_topic = [r["reply"] in topic_answers(t) for (t, _), r in zip(PARAPHRASES, para["rows"])]
        missed = [
            f"{q!r} -> {r['reply']!r}"
            for (_, q), r, ok in zip(PARAPHRASES, para["rows"], on_topic)
            if not ok
        ]
        print(
            f"{para['n']} questions worded as chat-demo never words them: {para['stopped']} "
            f"ended with <|im_end|>, {sum(on_topic)} got a reply of their topic"
            + (f"; off topic: {'; '.join(missed)}" if missed else "")
        )
    return 0
