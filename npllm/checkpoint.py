"""Checkpoints: weights and optimizer arrays in one safetensors file, everything else
(configs, tokenizer, iteration, RNG states, optimizer scalars) in a JSON record beside
it. Loading reads only JSON and safetensors, so it never unpickles anything.

Crash safety: a checkpoint `NAME` in a run folder is the record `NAME.json`, which names
its weights file `NAME-<sha256 prefix>.safetensors` and that file's sha256. Saving writes
the weights file under its new name first, then replaces the record (temp file + rename),
then deletes the old weights file. Killed at any point, the folder still holds either the
old record with its old weights or the new record with its new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npllm.errors import CheckpointError
from npllm.io import write_bytes_atomic, write_json_atomic

FORMAT = 1


# Nested optimizer state (dicts, lists, tuples, scalars, arrays) <-> a JSON skeleton whose
# arrays are replaced by references into the safetensors file. Containers are tagged so
# int dict keys and tuples come back as they went in.
def _flatten(obj: Any, key: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        arrays[key] = np.asarray(obj, order="C")  # keeps 0-d arrays 0-d
        return {"array": key, "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, dict):
        return {"dict": [[k, _flatten(v, f"{key}.{k}", arrays)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        tag = "tuple" if isinstance(obj, tuple) else "list"
        return {tag: [_flatten(v, f"{key}.{i}", arrays) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint ({key})")


def _unflatten(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if not isinstance(node, dict):
        return node
    if "array" in node:
        a = arrays[node["array"]]
        return a[()] if node["scalar"] else a
    if "dict" in node:
        return {k: _unflatten(v, arrays) for k, v in node["dict"]}
    if "tuple" in node:
        return tuple(_unflatten(v, arrays) for v in node["tuple"])
    return [_unflatten(v, arrays) for v in node["list"]]


@dataclass
class Checkpoint:
    model_state: dict[str, np.ndarray]
    optimizer_state: Any
    info: dict[str, Any]


def save_checkpoint(
    run_dir: str | os.PathLike,
    name: str,
    model_state: dict[str, np.ndarray],
    optimizer_state: Any,
    info: dict[str, Any],
) -> Path:
    """Save checkpoint `name` ("best", "last") in `run_dir`; returns the record's path.
    `info` must be JSON-serialisable (configs, iteration, RNG states, tokenizer...)."""
    from safetensors.numpy import save

    run_dir = Path(run_dir)
    arrays = {f"model.{k}": np.asarray(v, order="C") for k, v in model_state.items()}
    skeleton = _flatten(optimizer_state, "optim", arrays)
    blob = save(arrays, metadata={"format": f"npllm-{FORMAT}"})
    digest = hashlib.sha256(blob).hexdigest()
    weights = f"{name}-{digest[:16]}.safetensors"
    write_bytes_atomic(run_dir / weights, blob)
    record = {
        "format": FORMAT,
        "weights": weights,
        "weights_sha256": digest,
        "model_keys": list(model_state),
        "optimizer": skeleton,
        **info,
    }
    write_json_atomic(run_dir / f"{name}.json", record)
    for old in run_dir.glob(f"{name}-*.safetensors"):
        if old.name != weights:
            old.unlink(missing_ok=True)
    return run_dir / f"{name}.json"


def read_record(run_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The JSON record of checkpoint `name`, without reading its weights."""
    path = Path(run_dir) / f"{name}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"no checkpoint {name!r} in {run_dir} ({path.name} is missing); "
            f"train a run there first (npllm train --out {run_dir})"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt ({e}); start again with --overwrite"
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an npllm checkpoint record (format {FORMAT}); "
            "start again with --overwrite"
        )
    return record


def load_checkpoint(run_dir: str | os.PathLike, name: str = "last") -> Checkpoint:
    """Load checkpoint `name` from `run_dir`, checking the weights file's sha256."""
    from safetensors.numpy import load

    record = read_record(run_dir, name)
    path = Path(run_dir) / str(record.get("weights", ""))
    try:
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != record["weights_sha256"]:
            raise ValueError("sha256 mismatch")
        arrays = load(blob)
        model_state = {k: arrays[f"model.{k}"] for k in record["model_keys"]}
        optimizer_state = _unflatten(record["optimizer"], arrays)
    except Exception as e:  # any failure to read the weights means the checkpoint is unusable
        raise CheckpointError(
            f"checkpoint {name!r} in {run_dir}: weights file {path.name} is "
            f"missing or corrupt ({e}); start again with --overwrite"
        ) from None
    info = {
        k: v
        for k, v in record.items()
        if k not in ("format", "weights", "weights_sha256", "model_keys", "optimizer")
    }
    return Checkpoint(model_state, optimizer_state, info)
