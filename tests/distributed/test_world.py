"""npllm.distributed on its own: how a batch is split (pure functions, a stand-in
communicator), how `init` decides whether MPI is there, and the collectives, the flat
gradient buffer and ZeRO-1's sharded AdamW on 2 and 3 real ranks (collectives.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from npllm import distributed
from npllm.distributed import World, init
from npllm.errors import ConfigError
from tests.distributed.conftest import HERE, clean_env


class FakeComm:
    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size


def worlds(size: int) -> list[World]:
    return [World(FakeComm(r, size)) for r in range(size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [5, 6, 12, 13])
def test_rows_cover_the_batch_once_in_order(size, batch):
    rows = [w.rows(batch) for w in worlds(size)]
    assert [i for s in rows for i in range(s.start, s.stop)] == list(range(batch))
    assert max(s.stop - s.start for s in rows) - min(s.stop - s.start for s in rows) <= 1


@pytest.mark.parametrize("size", [2, 3])
def test_shard_weights_give_the_mean_of_the_whole_batch(size):
    """Chat targets: masked (-1) unevenly over the rows; the weighted per-rank means sum
    to the mean over every counted target of the batch."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, (7, 9))
    y = np.where(rng.random((7, 9)) < 0.6, -1, rng.integers(0, 50, (7, 9)))
    y[2] = -1  # a row with nothing counted
    per_token = rng.random((7, 9))
    whole = per_token[y != -1].mean()
    parts, got_rows = 0.0, []
    for w in worlds(size):
        xs, ys, weight = w.shard(x, y)
        rows = w.rows(7)
        assert np.array_equal(xs, x[rows]) and np.array_equal(ys, y[rows])
        got_rows.append(len(xs))
        mine = per_token[rows][ys != -1]
        parts += weight * (mine.mean() if mine.size else 0.0)
    assert sum(got_rows) == 7
    assert parts == pytest.approx(whole, rel=1e-12)


def test_shard_weights_of_plain_text_are_the_row_shares():
    x = np.zeros((5, 4), np.int64)
    ws = [w.shard(x, x)[2] for w in worlds(2)]
    assert ws == [2 / 5, 3 / 5]
    nothing = np.full((5, 4), -1)
    assert [w.shard(x, nothing)[2] for w in worlds(2)] == [2 / 5, 3 / 5]


def test_one_process_world_changes_nothing(monkeypatch):
    for v in (*distributed.LAUNCHER_VARIABLES, "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(v, raising=False)
    world = init()
    assert (world.rank, world.size, world.is_main) == (0, 1, True)
    x, y = np.ones((3, 2)), np.zeros((3, 2))
    xs, ys, w = world.shard(x, y)
    assert xs is x and ys is y and w == 1.0
    a = np.arange(3.0)
    assert world.allreduce(a) is a and np.array_equal(a, np.arange(3.0))
    assert world.mean_losses({"val": [1.0, 2.0]}, 2, stopped=False) == {"val": 1.5}
    assert world.mean_losses({"val": [1.0]}, 2, stopped=True) is None


def test_no_mpi4py_is_imported_without_a_launcher():
    code = (
        "import sys; from npllm.distributed import init; w = init(); "
        "assert w.size == 1; assert 'mpi4py' not in sys.modules, 'mpi4py imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=clean_env(), timeout=60)


def test_launcher_without_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[mpi\]'"):
        init()


def test_srun_without_mpi_is_refused(monkeypatch):
    for v in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    with pytest.raises(ConfigError, match="--mpi=pmi2"):
        init()


def test_batch_smaller_than_the_ranks_is_refused():
    with pytest.raises(ConfigError, match="global batch"):
        worlds(3)[0].check_batch_size(2)


@pytest.mark.parametrize("n", [2, 3])
def test_collectives_and_flat_buffer_on_real_ranks(mpiexec, n):
    out = mpiexec(n, sys.executable, str(HERE / "collectives.py"), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    threads = max(1, len(os.sched_getaffinity(0)) // n)  # one process per core
    for r in range(n):
        assert f"rank {r} of {n}: ok, threads {threads}" in out.stdout
        assert f"rank {r} of {n}: zero1 ok" in out.stdout
        assert f"rank {r} of {n}: check_same ok" in out.stdout
