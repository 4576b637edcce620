"""The training-step benchmark's machinery: same weights and batches in npllm and the
PyTorch reference give the same losses, and the shapes it shares with the decode
benchmark are complete model configs."""

from __future__ import annotations

import dataclasses

from benchmarks.train_step import SHAPES, measure_time, model_config
from npllm.gpt import GPTConfig


def test_shapes_are_complete_configs_of_the_presets():
    names = {f.name for f in dataclasses.fields(GPTConfig)}
    for shape in SHAPES.values():
        assert names - {"dropout"} <= set(shape)
    assert SHAPES["guppy"]["activation"] == "relu" and SHAPES["guppy"]["mlp_hidden"] == 768
    assert GPTConfig(**model_config("cpu-small")).hidden == 4 * 128


def test_two_interleaved_steps_agree_with_torch():
    r = measure_time("cpu-small", steps=2, warmup=0)
    assert len(r["times"]["npllm"]) == len(r["times"]["torch"]) == 2
    assert r["max_rel_loss_gap"] < 1e-5
    assert r["n_params"] > 800_000
