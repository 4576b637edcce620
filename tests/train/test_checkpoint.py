"""Checkpoints: exact round trip of weights, nested optimizer state and JSON info; a save
that fails at any point leaves the previous checkpoint loadable; corrupt or missing files
raise `CheckpointError`."""

from __future__ import annotations

import json

import numpy as np
import pytest

import npllm.checkpoint as ckpt
from npllm.checkpoint import load_checkpoint, save_checkpoint
from npllm.errors import CheckpointError


def states(seed: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    model = {"wte.weight": w, "lm_head.weight": w, "ln.bias": rng.standard_normal(3)}
    optim = {
        "step": 7 + seed,
        "groups": [{"lr": 1e-3 / 3, "betas": (0.9, 0.99), "weight_decay": 0.1}],
        "state": {0: {"m": rng.standard_normal(5).astype(np.float32), "v": np.float32(seed + 0.5)}},
        "flag": None,
    }
    info = {"iter": 10 * seed, "rng": np.random.default_rng(seed).bit_generator.state}
    return model, optim, info


def assert_same(a, b):
    if isinstance(a, dict):
        assert type(b) is dict and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.ndarray | np.generic):
        assert type(a) is type(b) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    else:
        assert type(a) is type(b) and a == b


def test_round_trip_is_exact(tmp_path):
    model, optim, info = states(1)
    save_checkpoint(tmp_path, "last", model, optim, info)
    c = load_checkpoint(tmp_path, "last")
    assert_same(model, c.model_state)
    assert_same(optim, c.optimizer_state)
    assert_same(info, c.info)
    g = np.random.default_rng()
    g.bit_generator.state = c.info["rng"]
    assert g.random() == np.random.default_rng(1).random()


def test_resave_replaces_the_old_weights_file(tmp_path):
    for seed in (1, 2, 2):
        save_checkpoint(tmp_path, "last", *states(seed))
    save_checkpoint(tmp_path, "best", *states(1))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 4 and names[0] == "best-" + names[0][5:]
    assert load_checkpoint(tmp_path, "last").info["iter"] == 20


@pytest.mark.parametrize(
    "fail_at", ["weights write", "weights fsync", "record write", "record fsync"]
)
def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch, fail_at):
    save_checkpoint(tmp_path, "last", *states(1))
    before = sorted(p.name for p in tmp_path.iterdir())
    calls = {"write": 0, "fsync": 0}
    kind, what = fail_at.split()[1], fail_at.split()[0]
    target = 1 if what == "weights" else 2

    class Killed(BaseException):
        pass

    real_fdopen, real_fsync = ckpt.os.fdopen, ckpt.os.fsync

    def fdopen(fd, mode):
        f = real_fdopen(fd, mode)
        calls["write"] += 1
        if kind == "write" and calls["write"] == target:
            f.write(b"partial")  # half-written temp file, then the process dies
            raise Killed
        return f

    def fsync(fd):
        calls["fsync"] += 1
        if kind == "fsync" and calls["fsync"] == target:
            raise Killed
        real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fdopen", fdopen)
    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, "last", *states(2))
    monkeypatch.undo()
    c = load_checkpoint(tmp_path, "last")
    assert c.info["iter"] == 10
    assert_same(states(1)[0], c.model_state)
    after = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert set(before) <= set(after)  # at most an orphaned new weights file is added
    save_checkpoint(tmp_path, "last", *states(3))  # the next save tidies up
    assert len(list(tmp_path.glob("last-*.safetensors"))) == 1


def test_missing_and_corrupt_checkpoints_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint 'last'"):
        load_checkpoint(tmp_path, "last")
    save_checkpoint(tmp_path, "last", *states(1))
    record = json.loads((tmp_path / "last.json").read_text())
    weights = tmp_path / record["weights"]
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path, "last")
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path, "last")
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing or corrupt"):
        load_checkpoint(tmp_path, "last")
    (tmp_path / "last.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path, "last")
    (tmp_path / "last.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not an npllm checkpoint"):
        load_checkpoint(tmp_path, "last")
