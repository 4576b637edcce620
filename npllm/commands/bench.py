"""`npllm bench NAME [options]`: run one of the project's benchmarks, a script in the
repository's `benchmarks/` folder (`npllm bench kernels` runs benchmarks/kernels.py, `npllm
bench train` benchmarks/train_step.py). Options after NAME go to the script; `npllm bench
kernels --help` lists them. Needs a source checkout (an editable install), since the
benchmarks are not part of the installed package.

This process only orchestrates: each benchmark runs every framework it compares (npllm,
the NumPy references, PyTorch) in fresh processes of its own (benchmarks/common.py)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

# short names for scripts whose file name differs
ALIASES = {
    "train": "train_step",
    "import-order": "import_order",
    "cold-start": "cold_start",
    "shakespeare": "shakespeare_char",
}


def _folder() -> Path:
    return Path(__file__).resolve().parents[2] / "benchmarks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="benchmark to run: kernels, train, ... (a benchmarks/*.py script)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options for the benchmark script")


def run(args: argparse.Namespace) -> int:
    from npllm.errors import ConfigError

    folder = _folder()
    script = folder / f"{ALIASES.get(args.name, args.name)}.py"
    if not script.is_file():
        known = sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "common"))
        raise ConfigError(
            f"no benchmark named {args.name!r} in {folder}; choose one of "
            f"{', '.join(known) or '(none: run from a source checkout, pip install -e .)'}"
        )
    spec = importlib.util.spec_from_file_location(f"benchmarks.{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return int(module.main(args.args) or 0)
