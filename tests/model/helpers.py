"""Shared pieces of the model tests: tiny configs, batches, and copying grads to NumPy."""

from __future__ import annotations

import numpy as np
import torch

from npllm.gpt import GPT, GPTConfig
from tests.model.torch_gpt import TorchConfig, TorchGPT, torch_gpt_from

TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def tiny_config(**overrides) -> GPTConfig:
    """The issue's tiny shape: V=65, L=2, nh=2, C=32, block 16."""
    kw = dict(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    kw.update(overrides)
    return GPTConfig(**kw)


def torch_config(c: GPTConfig) -> TorchConfig:
    return TorchConfig(
        c.vocab_size,
        c.block_size,
        c.n_layer,
        c.n_head,
        c.n_embd,
        c.bias,
        c.mlp_hidden,
        c.activation,
    )


def batch(config: GPTConfig, B: int = 3, T: int | None = None, seed: int = 0, ignore: int = 0):
    """Random idx and targets (B, T); `ignore` targets set to -1 (ignore_index)."""
    rng = np.random.default_rng(seed)
    T = config.block_size if T is None else T
    idx = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    if ignore:
        targets.reshape(-1)[rng.choice(B * T, ignore, replace=False)] = -1
    return idx, targets


def perturbed(model: GPT, scale: float, seed: int = 1) -> GPT:
    """Add noise to every parameter, so LayerNorm weights, biases and the residual
    projections are no longer at their special init values (ones, zeros, small)."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data += rng.normal(0.0, scale, p.shape).astype(p.dtype)
    return model


def reference(model: GPT, dtype=np.float32) -> TorchGPT:
    return torch_gpt_from(model.state_dict(), torch_config(model.config), TORCH_DTYPES[dtype])
