"""Loss curves from a run's `metrics.jsonl`: training loss per logged step, and the train
and val losses of each evaluation, drawn with matplotlib (the optional `plot` extra)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from npllm.errors import ConfigError, DataError


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(
            f"no metrics.jsonl in {run_dir}; pass a run folder of `npllm train`"
        ) from None
    records = []
    for i, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(f"{path} line {i} is not JSON; the file is damaged") from None
    return records


def plot_losses(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the loss curves of a run to `out` (default RUN/loss.png); returns its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'npllm[plot]'") from None
    records = read_metrics(run_dir)
    steps = [(r["iter"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["iter"], r["train_loss"], r["val_loss"]) for r in records if "val_loss" in r]
    if not steps and not evals:
        raise DataError(f"{run_dir}/metrics.jsonl holds no losses yet; train longer")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if steps:
        ax.plot(*zip(*steps), lw=0.8, alpha=0.5, label="train (batch)")
    if evals:
        it, tr, va = zip(*evals)
        ax.plot(it, tr, "o-", label="train (eval)")
        ax.plot(it, va, "o-", label="val (eval)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(Path(run_dir).resolve().name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out) if out else Path(run_dir) / "loss.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
