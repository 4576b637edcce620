"""`npllm export RUN --format hf|gguf|onnx --out PATH [--quantize q8_0|q4_0|int8]`: write a
run's model for another program (`npllm.export`): a Hugging Face folder for
`transformers`, a GGUF file for llama.cpp (F32, or Q8_0 / Q4_0 with `--quantize q8_0` /
`q4_0`, the latter npllm's int4 weights of `npllm quantize --bits 4`), or an
ONNX file for ONNX Runtime (float32, or int8 weights with `--quantize int8`)."""

from __future__ import annotations

import argparse

FORMATS = ("hf", "gguf", "onnx")
# the --quantize values each format takes (None: float32)
QUANTIZE = {"hf": (None,), "gguf": (None, "f32", "q8_0", "q4_0"), "onnx": (None, "int8")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder of `npllm train` or `npllm import-hf`")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="the folder (hf) or file (gguf, onnx) to write",
    )
    p.add_argument(
        "--quantize",
        default=None,
        metavar="TYPE",
        help="weight type: q8_0 or q4_0 for gguf (llama.cpp's 8- and 4-bit blocks), int8 "
        "for onnx "
        "(default: float32)",
    )
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "last"),
        help="which checkpoint of the run (default best)",
    )


def run(args: argparse.Namespace) -> int:
    from npllm.errors import ConfigError
    from npllm.runs import load_run

    quantize = args.quantize.lower() if args.quantize else None
    if quantize not in QUANTIZE[args.format]:
        allowed = [q for q in QUANTIZE[args.format] if q]
        raise ConfigError(
            f"--quantize {args.quantize} does not apply to --format {args.format}; "
            + (f"use {' or '.join(allowed)}, or drop it" if allowed else "drop it")
        )
    loaded = load_run(args.run, args.checkpoint)
    config, tokenizer = loaded.config, loaded.tokenizer
    state = loaded.model.state_dict()
    if args.format == "hf":
        from npllm.export.hf import write_hf

        path = write_hf(config, state, tokenizer, args.out)
    elif args.format == "gguf":
        from npllm.export.gguf import write_gguf

        path = write_gguf(config, state, tokenizer, args.out, quantize or "f32")
    else:
        from npllm.export.onnx import write_onnx

        path = write_onnx(config, state, args.out, int8=quantize == "int8")
    print(f"wrote {path}")
    return 0
