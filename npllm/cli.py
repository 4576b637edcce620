"""The `npllm` command. Each subcommand lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> int`; command modules import numpy, numba and
the rest inside `run`, so building the parser (and `npllm --help`) stays instant.
User errors (`NpllmError`) become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Add a command by adding a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("npllm.commands.demo", "fit a two-layer MLP on XOR with the autograd engine"),
    "prepare": ("npllm.commands.prepare", "tokenize a corpus into train/val token files"),
    "train": ("npllm.commands.train", "train a GPT on prepared data or a corpus"),
    "sample": ("npllm.commands.sample", "print text sampled from a trained run"),
    "chat": ("npllm.commands.chat", "talk to a chat model of a run in the terminal"),
    "serve": ("npllm.commands.serve", "serve a run's model over an OpenAI-compatible HTTP API"),
    "quantize": ("npllm.commands.quantize", "write an int8 weight-only copy of a run's checkpoint"),
    "export": ("npllm.commands.export", "write a run for transformers, llama.cpp (GGUF) or ONNX"),
    "import-hf": ("npllm.commands.import_hf", "turn a Hugging Face GPT-2 folder into a run"),
    "plot": ("npllm.commands.plot", "draw a run's loss curves to a PNG"),
    "viz": ("npllm.commands.viz", "draw autograd graphs, attention maps, kernel ratios"),
    "bench": ("npllm.commands.bench", "run a benchmark from benchmarks/ (kernels, train, ...)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npllm",
        description="Train and run GPT-style language models on the CPU with NumPy + Numba.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from npllm.errors import NpllmError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except NpllmError as e:
        print(f"npllm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"npllm {args.command}: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
