"""Shared machinery of the benchmarks: each framework in its own fresh process, runs
alternated A/B/A/B, medians with their spread, and the machine they ran on.

Why processes: two libraries in one process share more than memory. An OpenMP wait
policy, a BLAS thread count or a spinning pool set up by one slows the other, so a
comparison made in one process measures the mixture (docs/performance.md, "Comparing
fairly", has the history). Here every framework runs in a process of its own with
its own defaults: the parent (this module's `alternate`) imports neither npllm nor torch,
and no benchmark sets a thread variable.

The protocol. The parent starts `python benchmarks/NAME.py --worker KIND --spec JSON`;
the worker does its warm-up and timed samples and prints one line `@@bench-result {...}`
(its samples, results such as losses, and `worker_info()`: pid, thread pools, versions,
which of npllm/torch it imported, peak RSS). Runs alternate in rounds, the first of each
round rotating, so that a slow minute of the shared machine lands on every framework.
`Stats` summarises the per-run samples: the median of all samples, the range of the
per-run medians and the interquartile range of all samples.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MARK = "@@bench-result "
# Variables that steer thread pools, allocators or the kernels; a worker reports those
# set in its environment, so a reader sees that nothing was tuned for one side.
ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "OPENBLAS_", "MKL_", "BLIS_", "NUMBA_", "MALLOC_")
ENV_PREFIXES += ("NPLLM_", "TORCH_", "ATEN_")
# frameworks whose workers must not load the other side
NPLLM_SIDE = ("npllm", "numba", "numpy")


class BenchError(RuntimeError):
    """A worker failed, or a comparison is not what it claims to be."""


# ---- worker side -----------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: ru_maxrss would survive exec on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def calibrate(fn: Callable[[], object], target_s: float = 0.004, warmup: int = 2) -> int:
    """Warm `fn` up and return how many calls make one sample of about `target_s`."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(1000, int(target_s / dt)))


def time_calls(fn: Callable[[], object], samples: int, warmup: int = 1, inner: int = 1):
    """Seconds per call of `fn`: `warmup` untimed calls, then `samples` samples of `inner`
    calls each."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter() - t0) / inner)
    return out


def worker_info(framework: str) -> dict:
    """What a reader needs to judge a worker's figures, taken at its end (thread pools
    exist by then): pid, versions, thread counts, thread variables set, and which of the
    compared libraries the process loaded."""
    info: dict = {
        "pid": os.getpid(),
        "framework": framework,
        "python": platform.python_version(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
        "loaded": {m: m in sys.modules for m in ("npllm", "torch", "numba", "scipy")},
        "peak_rss_mb": peak_rss_mb(),
    }
    if "numpy" in sys.modules:
        info["numpy"] = sys.modules["numpy"].__version__
    if "numba" in sys.modules:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
        try:
            info["numba_layer"] = numba.threading_layer()
        except ValueError:  # no parallel function has run
            info["numba_layer"] = "not started"
    if "torch" in sys.modules:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer")}
            for p in threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


def run_worker(argv: Sequence[str], workers: dict[str, Callable[[dict], dict]]) -> int:
    """Entry of a worker process: `--worker KIND --spec JSON`. Prints the result line."""
    if len(argv) != 4 or argv[0] != "--worker" or argv[2] != "--spec" or argv[1] not in workers:
        raise SystemExit(f"usage: --worker {{{','.join(workers)}}} --spec JSON")
    kind, spec = argv[1], json.loads(argv[3])
    result = workers[kind](spec)
    result["info"] = worker_info(spec.get("framework", kind))
    print(MARK + json.dumps(result), flush=True)
    return 0


def log(msg: str) -> None:
    """Progress to stderr (a worker's stdout carries its result)."""
    print(msg, file=sys.stderr, flush=True)


# ---- parent side -----------------------------------------------------------------------
@dataclass
class Job:
    """One kind of run: `label` in the tables, `worker` the KIND a script handles, `spec`
    its JSON arguments (spec["framework"] names the side it stands for), `env` extra
    environment entries (only where the measurement is about them, e.g. a cache dir)."""

    label: str
    worker: str
    spec: dict
    env: dict = field(default_factory=dict)


def spawn(script: Path, job: Job, timeout: float | None = None) -> dict:
    """Run one job in a fresh Python process and return its parsed result."""
    env = {**os.environ, **job.env}
    npllm_side = job.spec.get("framework") not in ("torch", "llama.cpp", "transformers")
    if npllm_side and "NPLLM_WARM" not in job.env:
        # steady-state timings: a cold cache's drivers compile during the process's own
        # warm-up, not in a helper process while the timed steps run (npllm.kernels._warm);
        # cold_start.py, which measures that start, keeps the default
        env["NPLLM_WARM"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(script), "--worker", job.worker, "--spec", json.dumps(job.spec)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise BenchError(
            f"{job.label} worker ({script.name}) failed, exit {proc.returncode}:\n{tail}"
        )
    result = json.loads(lines[-1][len(MARK) :])
    result["label"] = job.label
    check_isolation(result)
    return result


def check_isolation(result: dict) -> None:
    """An npllm-side worker must not have loaded torch, nor torch's npllm, unless the job
    mixes them on purpose (spec "mixed")."""
    info = result["info"]
    fw, loaded = info["framework"], info["loaded"]
    if fw == "mixed":
        return
    if fw in NPLLM_SIDE and loaded["torch"]:
        raise BenchError(f"{result['label']}: the {fw} process imported torch")
    if fw == "torch" and loaded["npllm"]:
        raise BenchError(f"{result['label']}: the torch process imported npllm")


def alternate(
    script: Path,
    jobs: Sequence[Job],
    rounds: int,
    echo: Callable[[str], None] = log,
) -> dict[str, list[dict]]:
    """`rounds` rounds of every job, each run a fresh process, the first of each round
    rotating (A B, B A, ...; A B C, B C A, C A B, ...). Returns label -> results."""
    results: dict[str, list[dict]] = {j.label: [] for j in jobs}
    for r in range(rounds):
        k = r % len(jobs)
        for job in [*jobs[k:], *jobs[:k]]:
            t0 = time.perf_counter()
            res = spawn(script, job)
            res["round"] = r
            results[job.label].append(res)
            echo(
                f"  round {r + 1}/{rounds}: {job.label} (pid {res['info']['pid']}) "
                f"{time.perf_counter() - t0:.1f} s"
            )
    return results


@dataclass
class Stats:
    """A measurement over several runs: `runs` holds each run's samples."""

    runs: list[list[float]]

    @property
    def all(self) -> list[float]:
        return [x for run in self.runs for x in run]

    @property
    def median(self) -> float:
        return statistics.median(self.all)

    @property
    def run_medians(self) -> list[float]:
        return [statistics.median(r) for r in self.runs]

    @property
    def iqr(self) -> tuple[float, float]:
        xs = self.all
        if len(xs) < 2:
            return xs[0], xs[0]
        q = statistics.quantiles(xs, n=4, method="inclusive")
        return q[0], q[2]

    def map(self, f: Callable[[float], float]) -> Stats:
        return Stats([[f(x) for x in run] for run in self.runs])

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        """'median (runs lo-hi; IQR q1-q3)', values times `scale`."""

        def n(x: float) -> str:
            return f"{x * scale:,.{digits}f}"

        rm, (q1, q3) = self.run_medians, self.iqr
        return f"{n(self.median)} (runs {n(min(rm))}-{n(max(rm))}; IQR {n(q1)}-{n(q3)})"


def stats(results: list[dict], key: str) -> Stats:
    """The samples stored under result["samples"][key] of every run."""
    return Stats([r["samples"][key] for r in results])


def ratio(a: Stats, b: Stats) -> str:
    """Ratio of medians a/b, with the range of the per-round ratios."""
    per_round = [x / y for x, y in zip(a.run_medians, b.run_medians)]
    return f"{a.median / b.median:.2f} (rounds {min(per_round):.2f}-{max(per_round):.2f})"


# ---- the machine and the header --------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector extensions that matter here, from /proc/cpuinfo's flags."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return "unknown"
    names = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("amx_tile", "AMX")]
    return " / ".join(label for flag, label in names if flag in flags) or "no AVX2"


def load_average() -> float:
    return os.getloadavg()[0]


def describe_worker(info: dict) -> str:
    """One line: versions, thread pools and thread variables of one framework's process."""
    parts = [f"Python {info['python']}"]
    if "numpy" in info:
        parts.append(f"numpy {info['numpy']}")
    if "numba" in info:
        parts.append(
            f"numba {info['numba']} ({info['numba_threads']} threads, layer {info['numba_layer']})"
        )
    if "torch" in info:
        parts.append(
            f"torch {info['torch']} ({info['torch_threads']} intra-op threads, "
            f"{info['torch_interop_threads']} inter-op)"
        )
    pools = info.get("threadpools")
    if isinstance(pools, list):
        described = [
            f"{p['internal_api']} {p['version'] or ''} {p['num_threads']} threads"
            + (f" ({p['threading_layer']})" if p.get("threading_layer") else "")
            for p in pools
        ]
        parts.append("pools: " + ", ".join(d.replace("  ", " ") for d in described))
    env = info.get("env") or {}
    parts.append(
        "environment: " + (", ".join(f"{k}={v}" for k, v in env.items()) or "no thread variables")
    )
    parts.append(f"imported torch: {'yes' if info['loaded']['torch'] else 'no'}")
    parts.append(f"imported npllm: {'yes' if info['loaded']['npllm'] else 'no'}")
    return "; ".join(parts)


def header(
    results: dict[str, list[dict]], load: tuple[float, float], command: str, note: str = ""
) -> str:
    """The block above a benchmark's tables: machine, ISA, date, command, and per process
    kind its versions and thread counts, and the load average at start and end."""
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {cpu_isa()}. Date: {date}.",
        f"Command: `{command}`",
        f"Load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}.",
        "",
    ]
    for label, runs in results.items():
        if runs:
            pids = ", ".join(str(r["info"]["pid"]) for r in runs)
            lines.append(f"- {label} (pids {pids}): {describe_worker(runs[0]['info'])}")
    tuned = sorted(
        {
            f"{k}={v}"
            for runs in results.values()
            for r in runs
            for k, v in r["info"]["env"].items()
            if r["info"]["framework"] == "torch"
        }
    )
    if tuned:  # inherited from whoever started the benchmark: say so where it shows
        lines += [
            "",
            f"**Warning**: torch's processes ran with {', '.join(tuned)} set; "
            "these are not torch's defaults.",
        ]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def command_line(script: str, argv: Sequence[str] | None) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", f"benchmarks/{script}", *args])


def section_heading(base: str, shapes: Sequence[str]) -> str:
    """The RESULTS.md heading of a run: a llama-small-only run keeps its own section beside
    the GPT-2 shapes' one instead of replacing it."""
    return f"{base} (Llama family: llama-small)" if list(shapes) == ["llama-small"] else base


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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, path)
