"""Fixtures of the MPI tests: `mpiexec(n, *argv)` runs a command on n ranks with the
mpiexec of the mpich wheel beside this Python (the test extra installs it), bounded by a
timeout so that a hang fails the test instead of stalling the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def find_mpiexec() -> str:
    local = BIN / "mpiexec"
    found = str(local) if local.is_file() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("no mpiexec: install the test extra (it brings the mpich wheel)")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any MPI launcher's variables (the test itself may run
    under one) and with one Numba thread unless told otherwise."""
    from npllm.distributed import LAUNCHER_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.pop("SLURM_STEP_NUM_TASKS", None)
    env.update(extra)
    return env


SHM = Path("/dev/shm")


def shm_segments() -> set[Path]:
    return set(SHM.glob("mpich_shm_*")) if SHM.is_dir() else set()


def drop_orphan_segments(before: set[Path]) -> None:
    """A job ended by MPI_Abort leaves its shared-memory segment (2 MB) in /dev/shm: remove
    those that appeared during the job and that no process maps any more."""
    new = shm_segments() - before
    if not new:
        return
    mapped = ""
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped += maps.read_text()
        except OSError:
            continue
    for seg in new:
        if str(seg) not in mapped:
            seg.unlink(missing_ok=True)


@pytest.fixture
def mpiexec():
    exe = find_mpiexec()

    def run(n: int, *argv: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
        cmd = [exe, "-n", str(n), *argv] if n > 0 else list(argv)
        before = shm_segments()
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(**env)
            )
        finally:
            drop_orphan_segments(before)

    return run
