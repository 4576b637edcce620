"""The `npllm` subcommands around training: `prepare`, `train`, `sample`, `plot`. Each
module provides `add_arguments(parser)` and `run(args) -> int` (see `npllm/cli.py`)."""
