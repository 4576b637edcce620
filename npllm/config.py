"""What a run is made of: `TrainConfig` (the training hyperparameters; the model's are in
`GPTConfig`) and the named presets, which set both at once (`npllm train --preset NAME`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from npllm.errors import ConfigError


@dataclass
class TrainConfig:
    """Training hyperparameters (the model's are in `GPTConfig`). Defaults are cpu-small."""

    batch_size: int = 12
    max_iters: int = 2000
    lr_decay_iters: int | None = None  # None: max_iters
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    decay_lr: bool = True  # False: constant learning_rate
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0: no clipping
    gradient_accumulation_steps: int = 1
    eval_interval: int = 250
    eval_iters: int = 200
    log_interval: int = 10
    seed: int = 1337

    def validate(self) -> None:
        positive = (
            "batch_size",
            "gradient_accumulation_steps",
            "eval_interval",
            "eval_iters",
            "log_interval",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        for name in ("max_iters", "warmup_iters", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                )
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a number >= 0, got {value}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.decay_lr and self.decay_iters < self.warmup_iters:
            raise ConfigError(
                f"the learning rate would finish decaying at step {self.decay_iters} "
                "(--lr-decay-iters, default --max-iters) before its warmup ends "
                f"(--warmup-iters {self.warmup_iters}); lower --warmup-iters or "
                "raise --lr-decay-iters"
            )

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    def lr_at(self, it: int) -> float:
        from npllm.optim import cosine_lr

        if not self.decay_lr:
            return self.learning_rate
        return cosine_lr(it, self.learning_rate, self.warmup_iters, self.decay_iters, self.min_lr)


# Model fields (GPTConfig) and training fields (TrainConfig) together; the data fixes
# vocab_size unless a preset or flag asks for a larger one.
PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's CPU run of train_shakespeare_char (its README): ~0.8M parameters
    "cpu-small": dict(
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=64,
        dropout=0.0,
        batch_size=12,
        max_iters=2000,
        lr_decay_iters=None,
        learning_rate=1e-3,
        min_lr=1e-4,
        warmup_iters=100,
        beta1=0.9,
        beta2=0.99,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=250,
        eval_iters=200,
    ),
    # GuppyLM's shape, meant for a BPE vocabulary (`npllm prepare --tokenizer bpe`)
    "guppy": dict(
        n_layer=6,
        n_head=6,
        n_embd=384,
        mlp_hidden=768,
        activation="relu",
        block_size=128,
        dropout=0.1,
        batch_size=32,
        max_iters=5000,
        lr_decay_iters=None,
        learning_rate=3e-4,
        min_lr=3e-5,
        warmup_iters=200,
        beta1=0.9,
        beta2=0.95,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=250,
        eval_iters=100,
    ),
    # A chat model that a 2-core CPU trains in about 15 minutes on `chat-demo` with a
    # BPE vocabulary of 1024 (README, "Chat"); the loss counts assistant tokens only.
    "chat": dict(
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=128,
        dropout=0.0,
        batch_size=16,
        max_iters=3000,
        lr_decay_iters=None,
        learning_rate=2e-3,
        min_lr=2e-4,
        warmup_iters=100,
        beta1=0.9,
        beta2=0.99,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=250,
        eval_iters=50,
    ),
    # cpu-small's size and schedule in today's architecture (the Llama family: RoPE,
    # RMSNorm, SwiGLU, grouped-query attention with 2 key/value heads, no biases)
    "llama-small": dict(
        n_layer=4,
        n_head=4,
        n_kv_head=2,
        n_embd=128,
        mlp_hidden=352,
        block_size=64,
        bias=False,
        pos_embedding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        dropout=0.0,
        batch_size=12,
        max_iters=2000,
        lr_decay_iters=None,
        learning_rate=1e-3,
        min_lr=1e-4,
        warmup_iters=100,
        beta1=0.9,
        beta2=0.99,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=250,
        eval_iters=200,
    ),
}
DEFAULT_PRESET = "cpu-small"


def scaled_warmup(values: dict[str, Any]) -> int | None:
    """A preset's warmup shortened to a tenth of the decay steps when it is longer
    (so `--max-iters 20` trains), or None when it fits as it is."""
    if values.get("decay_lr") is False:
        return None  # a constant learning rate has no warmup
    decay = values.get("lr_decay_iters") or values.get("max_iters", 0)
    warmup = values.get("warmup_iters", 0)
    return decay // 10 if warmup > decay // 10 else None


def model_fields() -> list[dataclasses.Field]:
    from npllm.gpt import GPTConfig

    return list(dataclasses.fields(GPTConfig))


def split_overrides(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat {field: value} into (model fields, training fields)."""
    names = {f.name for f in model_fields()}
    return (
        {k: v for k, v in values.items() if k in names},
        {k: v for k, v in values.items() if k not in names},
    )


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
