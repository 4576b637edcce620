"""`npllm import-hf PATH --out RUN`: turn a Hugging Face GPT-2-family folder (written by
`save_pretrained`) into an npllm run folder whose `best` checkpoint `npllm sample`,
`npllm train --init-from` and `npllm export` read (`npllm.export.import_hf`)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="a Hugging Face model folder (save_pretrained)")
    p.add_argument("--out", required=True, metavar="RUN", help="the run folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from npllm.export.import_hf import import_hf
    from npllm.io import ensure_writable_dir
    from npllm.runs import check_run_dir

    out = Path(args.out)
    check_run_dir(out, resume=False, overwrite=args.overwrite)
    ensure_writable_dir(out, "--out")
    run_dir = import_hf(args.path, out, overwrite=args.overwrite)
    print(f"imported {args.path} into the run {run_dir}")
    return 0
