"""A run folder: what training writes there (checkpoints, `metrics.jsonl`), how a new run,
a resumed one and a fine-tuned one treat it, and `load_run`, the one way to get a trained
model back out of it (for sampling, chat, serving, quantizing and export)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npllm.checkpoint import load_checkpoint, read_record
from npllm.errors import CheckpointError, ConfigError, DataError
from npllm.io import write_bytes_atomic

RUN_FILES = ("last.json", "best.json", "metrics.jsonl")


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an existing one unless told to overwrite it."""
    if resume and overwrite:
        raise ConfigError("pass either --resume or --overwrite, not both")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; pass a folder for the run")
    held = [n for n in RUN_FILES if (run_dir / n).exists()]
    if held and not resume and not overwrite:
        raise CheckpointError(
            f"{run_dir} already holds a run ({', '.join(held)}); pass --resume "
            "to continue it, --overwrite to start again, or another --out"
        )


def clear_run(run_dir: Path) -> None:
    """Remove what a run writes, and nothing else the folder may hold."""
    for pattern in (
        "last.json",
        "best.json",
        "last-*.safetensors",
        "best-*.safetensors",
        "metrics.jsonl",
        "loss.png",
    ):
        for p in run_dir.glob(pattern):
            p.unlink()


def rewrite_metrics_until(path: Path, last_iter: int) -> None:
    """On resume, drop what a killed run logged after its last checkpoint."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["iter"] <= last_iter:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_bytes_atomic(path, "".join(kept).encode("utf-8"))


def resume_configs(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(model config, train config, data folder) recorded in a run's `last` checkpoint."""
    info = read_record(run_dir, "last")
    try:
        return dict(info["model_config"]), dict(info["train_config"]), str(info["data"]["dir"])
    except (KeyError, TypeError):
        raise CheckpointError(
            f"the checkpoint in {run_dir} lacks its configs; it is corrupt. "
            "Start again with --overwrite"
        ) from None


def compatible_tokenizers(base: Any, data: Any) -> bool:
    """True when `data` is `base` with zero or more special tokens appended."""
    a, b = base.to_dict(), data.to_dict()
    a_specials, b_specials = a.pop("specials", []), b.pop("specials", [])
    return a == b and b_specials[: len(a_specials)] == a_specials


def init_weights(run_dir: str | os.PathLike, model: Any, data_tokenizer: Any) -> str:
    """Load the weights of a run's best (else last) checkpoint into `model`, whose
    vocabulary may be larger (new rows keep their fresh init); returns which one."""
    from npllm.tokenizers import tokenizer_from_dict

    name = "best" if (Path(run_dir) / "best.json").is_file() else "last"
    ck = load_checkpoint(run_dir, name)
    try:
        base = tokenizer_from_dict(ck.info["tokenizer"])
    except KeyError:
        raise CheckpointError(f"the checkpoint in {run_dir} lacks its tokenizer") from None
    if not compatible_tokenizers(base, data_tokenizer):
        raise DataError(
            f"the data was not tokenized with the tokenizer of {run_dir}; prepare it with "
            f"`npllm prepare --tokenizer-from {run_dir}`"
        )
    state = dict(ck.model_state)
    from npllm.arch import naming

    own = model.state_dict()
    embed = naming(model.config).top("embed")  # the Llama family's name differs
    # an untied lm_head grows by its own fresh rows; a tied one is the embedding
    keys = [embed] if model.config.tie_embeddings else [embed, "lm_head.weight"]
    for key in keys:
        old, new = state[key], own[key]
        if old.shape[0] < new.shape[0] and old.shape[1:] == new.shape[1:]:
            grown = new.copy()
            grown[: old.shape[0]] = old
            state[key] = grown
    if model.config.tie_embeddings and "lm_head.weight" in state:
        state["lm_head.weight"] = state[embed]
    try:
        model.load_state_dict(state)
    except CheckpointError as e:
        raise CheckpointError(
            f"the checkpoint in {run_dir} does not fit this model ({e}); drop the model flags "
            "with --init-from: the model keeps that run's shape"
        ) from None
    return name


# the quantized checkpoints' names in a run folder, by bits (`npllm quantize --bits`)
QUANTIZED_NAMES = {8: "int8", 4: "int4"}
QUANTIZED_NAME = QUANTIZED_NAMES[8]


def quantized_name(run: str | os.PathLike) -> str:
    """The quantized checkpoint `npllm quantize` wrote last in `run` ("int8" or "int4"),
    or "int8" when there is none (its loading then names the fix)."""
    records = [Path(run) / f"{n}.json" for n in QUANTIZED_NAMES.values()]
    written = [r for r in records if r.is_file()]
    return max(written, key=lambda r: r.stat().st_mtime_ns).stem if written else QUANTIZED_NAME


@dataclass
class LoadedRun:
    """A trained model out of a run folder. `model` is a `GPT` in eval mode, or, for the
    quantized checkpoint, a `Decoder` over its weights (both go to `generate`/`stream`);
    `config` is its `GPTConfig`; `info` the checkpoint's record (iteration, losses, ...)."""

    model: Any
    tokenizer: Any
    config: Any
    info: dict[str, Any]
    name: str


def load_run(
    run: str | os.PathLike, name: str = "best", quantized: bool | str = False
) -> LoadedRun:
    """Load checkpoint `name` of run folder `run` (or, with `quantized`, the weights that
    `npllm quantize` wrote last: int8 or int4; `quantized="int4"` asks for one), with its
    tokenizer. Errors name the problem and the fix."""
    from npllm.gpt import GPT, GPTConfig
    from npllm.tokenizers import tokenizer_from_dict

    if quantized:
        name = quantized if isinstance(quantized, str) else quantized_name(run)
        try:
            ck = load_checkpoint(run, name)
        except CheckpointError as e:
            raise CheckpointError(
                f"{e} (for --quantized, run `npllm quantize {run}` first)"
            ) from None
    else:
        ck = load_checkpoint(run, name)
    try:
        config = GPTConfig(**ck.info["model_config"])
        tokenizer = tokenizer_from_dict(ck.info["tokenizer"])
    except (KeyError, TypeError) as e:
        fix = f"run `npllm quantize {run}` again" if quantized else "train the run again"
        raise CheckpointError(
            f"the {name} checkpoint in {run} lacks {e}; it is corrupt; {fix}"
        ) from None
    if quantized:
        from npllm.decoder import Decoder
        from npllm.quant import load_weights

        model = Decoder(config, load_weights(ck.model_state))
    else:
        model = GPT(config)
        model.load_state_dict(ck.model_state)
        model.eval()
    return LoadedRun(model, tokenizer, config, ck.info, name)
