"""Shared helpers for the benchmarks: interleaved timing, machine description, and writing
one section of benchmarks/RESULTS.md without touching the others.

Interleaving: on a shared, noisy 2-core machine, A then B measures the machine's mood as
much as the code. `interleaved` runs one sample of each candidate in turn (rotating who
goes first) and keeps every sample, so noise lands on all candidates alike; report
medians and ratios.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def calibrate(fn: Callable[[], object], target_s: float = 0.004, warmup: int = 2) -> int:
    """Warm `fn` up and return how many calls make one sample of about `target_s`."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(1000, int(target_s / dt)))


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int = 15, target_s: float = 0.004
) -> dict[str, list[float]]:
    """Seconds per call of each function: `reps` samples each, taken in rotation."""
    inner = {name: calibrate(fn, target_s) for name, fn in fns.items()}
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, n = fns[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return samples


def median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, str]:
    """What a reader needs to judge the numbers: machine, date, versions."""
    import numba
    import numpy as np

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": f"{numba.__version__} (SVML: {numba.config.USING_SVML})",
    }
    try:
        import torch

        info["torch"] = f"{torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        info["torch"] = "not installed"
    return info


def write_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Replace the `## heading` section of RESULTS.md with `body` (or append it), leaving
    every other section as it was."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == f"## {heading}"), None)
    block = [f"## {heading}", "", *body.rstrip().splitlines(), ""]
    if start is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines.extend(block)
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = block
    path.write_text("\n".join(lines).rstrip() + "\n")
