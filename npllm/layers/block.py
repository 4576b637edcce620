"""The transformer's feed-forward `MLP` and the pre-LayerNorm `Block`, as nanoGPT:
x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

from __future__ import annotations

from typing import Any

import numpy as np

import npllm.functional as F
from npllm.autograd.engine import Tensor
from npllm.errors import ConfigError
from npllm.layers.attention import CausalSelfAttention
from npllm.layers.basic import Dropout, LayerNorm, Linear
from npllm.layers.module import Module

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's
    "gelu_exact": lambda x: F.gelu(x, approximate="none"),  # erf, nanoGPT's nn.GELU()
    "relu": F.relu,  # GuppyLM's
}


class MLP(Module):
    """c_fc (C -> hidden), activation, c_proj (hidden -> C), dropout."""

    def __init__(
        self,
        n_embd: int,
        hidden: int,
        activation: str = "gelu",
        bias: bool = True,
        dropout: float = 0.0,
        *,
        std: float = 0.02,
        proj_std: float = 0.02,
        rng: np.random.Generator | None = None,
        dropout_rng: np.random.Generator | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}"
            )
        self.activation = activation
        self.c_fc = Linear(n_embd, hidden, bias, std=std, rng=rng, dtype=dtype)
        self.c_proj = Linear(hidden, n_embd, bias, std=proj_std, rng=rng, dtype=dtype)
        self.dropout = Dropout(dropout, dropout_rng)

    def forward(self, x: Tensor) -> Tensor:
        h = ACTIVATIONS[self.activation](self.c_fc(x))  # (B, T, hidden)
        return self.dropout(self.c_proj(h))  # (B, T, C)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class Block(Module):
    """One transformer block: pre-LayerNorm attention and MLP, each added to the residual."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        hidden: int,
        activation: str = "gelu",
        bias: bool = True,
        dropout: float = 0.0,
        *,
        std: float = 0.02,
        proj_std: float = 0.02,
        rng: np.random.Generator | None = None,
        dropout_rng: np.random.Generator | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        shared = dict(std=std, proj_std=proj_std, rng=rng, dropout_rng=dropout_rng, dtype=dtype)
        self.ln_1 = LayerNorm(n_embd, bias, dtype=dtype)
        self.attn = CausalSelfAttention(n_embd, n_head, bias, dropout, **shared)
        self.ln_2 = LayerNorm(n_embd, bias, dtype=dtype)
        self.mlp = MLP(n_embd, hidden, activation, bias, dropout, **shared)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)
