"""The training configs: every field has a flag, the presets build valid configs, the
learning-rate schedule, and validation."""

from __future__ import annotations

import dataclasses

import pytest

from npllm.commands.train import MODEL_FLAGS, PRESET_NAMES, TRAIN_FLAGS
from npllm.config import PRESETS, TrainConfig, preset_values, split_overrides
from npllm.errors import ConfigError
from npllm.gpt import GPTConfig


def test_every_config_field_has_a_flag():
    assert [n for n, _, _ in MODEL_FLAGS] == [f.name for f in dataclasses.fields(GPTConfig)]
    assert [n for n, _, _ in TRAIN_FLAGS] == [f.name for f in dataclasses.fields(TrainConfig)]
    assert PRESET_NAMES == tuple(PRESETS)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_valid_configs(name):
    model, train = split_overrides(preset_values(name))
    GPTConfig(vocab_size=65, **model)
    TrainConfig(**train).validate()


def test_cpu_small_is_nanogpts_cpu_run():
    model, train = split_overrides(preset_values("cpu-small"))
    assert model == dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)
    c = TrainConfig(**train)
    assert (c.batch_size, c.max_iters, c.decay_iters, c.warmup_iters) == (12, 2000, 2000, 100)
    assert (c.learning_rate, c.min_lr, c.beta2, c.weight_decay, c.grad_clip) == (
        1e-3,
        1e-4,
        0.99,
        0.1,
        1.0,
    )


def test_learning_rate_warms_up_then_decays_to_min_lr():
    c = TrainConfig(max_iters=100, warmup_iters=10, learning_rate=1.0, min_lr=0.1)
    lrs = [c.lr_at(i) for i in range(101)]
    assert lrs[0] < lrs[5] < lrs[10] and max(lrs) == pytest.approx(1.0, abs=0.01)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(0.1)
    assert TrainConfig(decay_lr=False, learning_rate=0.5).lr_at(7) == 0.5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("max_iters", -1),
        ("learning_rate", float("nan")),
        ("beta1", 1.0),
        ("eval_iters", 0),
        ("lr_decay_iters", 5),
    ],
)
def test_validation_names_the_flag(field, value):
    with pytest.raises(ConfigError, match="--" + field.replace("_", "-")):
        TrainConfig(**{field: value}).validate()


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'x'"):
        preset_values("x")


def test_scaled_warmup_shortens_only_a_warmup_longer_than_a_tenth_of_the_decay():
    from npllm.config import scaled_warmup

    assert scaled_warmup({"max_iters": 20, "warmup_iters": 100}) == 2
    assert scaled_warmup({"max_iters": 2000, "warmup_iters": 100}) is None
    assert scaled_warmup({"max_iters": 500, "lr_decay_iters": 300, "warmup_iters": 100}) == 30
    assert scaled_warmup({"max_iters": 20, "warmup_iters": 100, "decay_lr": False}) is None
