"""`mpiexec -n 2 npllm train`: two ranks train the model one process trains (losses and
final weights within float32 reduction-order tolerance over 20 steps, gradient
accumulation and an uneven split included), a run resumes with another number of ranks,
and a rank that fails stops the job with a clear message instead of hanging."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from npllm.checkpoint import load_checkpoint
from npllm.runs import load_run
from tests.cli.conftest import corpus_file, data_dir  # noqa: F401  (fixtures)
from tests.distributed.conftest import BIN, HERE

NPLLM = str(BIN / "npllm")
# --batch-size 5 splits 2 + 3 over two ranks; the schedule is fixed by --lr-decay-iters so
# that a run stopped at 10 and resumed to 20 follows the straight run's learning rates.
TINY = (
    "--n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 5 "
    "--gradient-accumulation-steps 2 --eval-iters 3 --eval-interval 10 --log-interval 1 "
    "--warmup-iters 2 --lr-decay-iters 20 --quiet"
).split()


def train(mpiexec, n: int, data: Path, out: Path, *flags: str, timeout: float = 240):
    """`npllm train` on n ranks (n = 0: plain, no mpiexec at all)."""
    res = mpiexec(
        n, NPLLM, "train", "--data", str(data), "--out", str(out), *TINY, *flags, timeout=timeout
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def losses(run: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [
        (r["iter"], k, r[k]) for r in rows for k in ("loss", "train_loss", "val_loss") if k in r
    ]


def files(run: Path) -> list[str]:
    return sorted(re.sub(r"-[0-9a-f]+\.", "-*.", p.name) for p in run.iterdir())


def assert_same_training(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert [x[:2] for x in la] == [x[:2] for x in lb]
    assert len([x for x in la if x[1] == "loss"]) == 20
    np.testing.assert_allclose([x[2] for x in lb], [x[2] for x in la], rtol=1e-5)
    ca, cb = load_checkpoint(a, "last"), load_checkpoint(b, "last")
    assert ca.info["iter"] == cb.info["iter"] == 20
    for name, wa in ca.model_state.items():
        # The key part of c_attn's bias has a true gradient of 0 (softmax ignores a shift
        # of a row's scores): its gradient is rounding noise, which AdamW scales up to
        # steps of up to lr * 1e-2; every other weight agrees to float32 rounding.
        atol = 2e-4 if name.endswith("attn.c_attn.bias") else 1e-6
        np.testing.assert_allclose(cb.model_state[name], wa, rtol=1e-4, atol=atol, err_msg=name)
    for i, sa in ca.optimizer_state["state"].items():
        sb = cb.optimizer_state["state"][i]
        assert sa["step"] == sb["step"] == 20
        np.testing.assert_allclose(sb["exp_avg"], sa["exp_avg"], rtol=1e-3, atol=1e-7)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):  # noqa: F811
    """20 steps in one process without MPI: the run every other one must match."""
    import subprocess

    from tests.distributed.conftest import clean_env

    out = tmp_path_factory.mktemp("straight") / "run"
    cmd = [NPLLM, "train", "--data", str(data_dir), "--out", str(out), *TINY, "--max-iters", "20"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=clean_env())
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def test_two_ranks_train_the_model_of_one(mpiexec, straight, data_dir, tmp_path):  # noqa: F811
    res = train(mpiexec, 2, data_dir, tmp_path / "two", "--max-iters", "20")
    assert "data-parallel over 2 MPI ranks, 1 thread(s) each" in res.stderr
    assert "--batch-size 5 is the global batch (2 or 3 rows per rank)" in res.stderr
    assert res.stdout.count("trained 20 iterations") == 1  # rank 0 alone reports
    assert files(tmp_path / "two") == files(straight)  # rank 0 alone writes
    assert_same_training(straight, tmp_path / "two")


def test_one_rank_under_mpiexec_is_the_plain_run(mpiexec, straight, data_dir, tmp_path):  # noqa: F811
    train(mpiexec, 1, data_dir, tmp_path / "one", "--max-iters", "20")
    assert losses(tmp_path / "one") == losses(straight)
    ca, cb = load_checkpoint(straight, "last"), load_checkpoint(tmp_path / "one", "last")
    for name, w in ca.model_state.items():
        assert np.array_equal(cb.model_state[name], w), name


@pytest.mark.parametrize(
    "first,then",
    [((2,), (0,)), ((0,), (2,)), ((2, "--zero1"), (0,)), ((0,), (3, "--zero1"))],
    ids=["2-1", "1-2", "2zero1-1", "1-3zero1"],
)
def test_resume_with_another_number_of_ranks(mpiexec, straight, data_dir, tmp_path, first, then):  # noqa: F811
    """A checkpoint holds the whole model and AdamW state, whatever N (and ZeRO-1) wrote it."""
    run = tmp_path / "run"
    train(mpiexec, first[0], data_dir, run, "--max-iters", "10", *first[1:])
    assert load_checkpoint(run, "last").info["iter"] == 10
    resume = [NPLLM, "train", "--out", str(run), "--resume", "--max-iters", "20", "--quiet"]
    res = mpiexec(then[0], *resume, *then[1:], timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_same_training(straight, run)


def test_zero1_on_three_ranks_trains_the_model_of_one(mpiexec, straight, data_dir, tmp_path):  # noqa: F811
    """AdamW's moments in three uneven shards that cut parameters apart, a 1 + 2 + 2 row
    split of the batch: still the one-process training, and a whole checkpoint."""
    train(mpiexec, 3, data_dir, tmp_path / "z", "--max-iters", "20", "--zero1")
    assert_same_training(straight, tmp_path / "z")


def test_a_failing_rank_stops_every_rank(mpiexec, data_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    argv = ["--data", str(data_dir), "--out", str(run), *TINY, "--max-iters", "40"]
    res = mpiexec(
        2, sys.executable, str(HERE / "failing_rank.py"), *argv, timeout=120, FAIL_AT="26"
    )  # step 13: two micro-batches a step
    assert res.returncode != 0
    assert "npllm train: error: rank 1 of 2 failed: injected failure at step 26" in res.stderr
    assert "stopping every rank" in res.stderr
    last = load_run(run, "last")  # the checkpoint of step 10 is whole
    assert last.info["iter"] == 10
    assert np.isfinite(last.model.parameters()[0].data).all()


def test_a_user_error_under_mpi_is_one_clear_line(mpiexec, data_dir, tmp_path):  # noqa: F811
    res = mpiexec(
        2,
        NPLLM,
        "train",
        "--data",
        str(data_dir),
        "--out",
        str(tmp_path / "r"),
        *TINY,
        "--batch-size",
        "1",
        timeout=120,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--batch-size 1 is the global batch, split over 2 MPI ranks" in res.stderr
    assert "Traceback" not in res.stderr


def test_every_rank_shortens_the_warmup_alike(mpiexec, data_dir, tmp_path):  # noqa: F811
    """Without --warmup-iters the preset's warmup is cut to a tenth of the run on every
    rank (rank 0 alone says so); the ranks' configs are checked to agree."""
    i = TINY.index("--warmup-iters")
    flags = TINY[:i] + TINY[i + 2 :]
    out = str(tmp_path / "run")
    res = mpiexec(2, NPLLM, "train", "--data", str(data_dir), "--out", out, *flags,
                  "--max-iters", "10", timeout=240)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.count("warmup shortened from 100 to 2 steps") == 1  # --lr-decay-iters 20
    assert load_checkpoint(out, "last").info["train_config"]["warmup_iters"] == 2


def test_a_corpus_is_prepared_once_for_all_ranks(mpiexec, corpus_file, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    res = mpiexec(
        2,
        NPLLM,
        "train",
        "--corpus",
        str(corpus_file),
        "--out",
        str(run),
        *TINY,
        "--max-iters",
        "4",
        timeout=240,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (run / "data" / "meta.json").is_file()
    assert load_checkpoint(run, "last").info["iter"] == 4


def test_chat_data_two_ranks_train_the_model_of_one(mpiexec, tmp_path):
    """Chat targets are masked unevenly over the rows: each rank's loss is weighted by its
    share of the counted targets, so the sum is still the one-process masked mean."""
    from npllm.chat_data import prepare_chat

    data = tmp_path / "chat"
    prepare_chat("chat-demo", data, size=120, seed=2)
    flags = ("--block-size", "64", "--max-iters", "20")  # 0 to 43 counted targets a row
    train(mpiexec, 0, data, tmp_path / "one", *flags)
    train(mpiexec, 2, data, tmp_path / "two", *flags)
    assert_same_training(tmp_path / "one", tmp_path / "two")


def test_ctrl_c_stops_every_rank_at_the_same_step(data_dir, tmp_path):  # noqa: F811
    """mpiexec forwards Ctrl-C to every rank; the ranks agree on it through the step's
    allreduce, rank 0 writes the last checkpoint, and the run resumes from it."""
    import signal
    import subprocess
    import time

    from tests.distributed.conftest import clean_env, find_mpiexec

    run = tmp_path / "run"
    argv = [find_mpiexec(), "-n", "2", NPLLM, "train", "--data", str(data_dir), "--out", str(run)]
    proc = subprocess.Popen(
        [*argv, *TINY, "--max-iters", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and '"loss"' not in _read(run / "metrics.jsonl"):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert err.count("interrupted: stopped at iteration") == 1, err  # rank 0 alone says it
    stopped = load_checkpoint(run, "last").info["iter"]
    assert stopped == max(it for it, _, _ in losses(run))
    res = subprocess.run(
        [NPLLM, "train", "--out", str(run), "--resume", "--max-iters", str(stopped + 2), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert load_checkpoint(run, "last").info["iter"] == stopped + 2


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
