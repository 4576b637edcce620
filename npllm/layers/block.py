"""The transformer's feed-forward `MLP` and the pre-LayerNorm `Block`, as nanoGPT:
x + attn(ln_1(x)), then x + mlp(ln_2(x)). Children are named by the model description's
`Naming` (`npllm.arch`): nanoGPT's names by default, transformers' Llama names for that
family (`input_layernorm`, `self_attn`, `post_attention_layernorm`, `mlp.up_proj`, ...)."""

from __future__ import annotations

from typing import Any

import numpy as np

import npllm.functional as F
from npllm.arch import GPT2_NAMES, Naming
from npllm.autograd.engine import Tensor
from npllm.errors import ConfigError
from npllm.layers.attention import CausalSelfAttention
from npllm.layers.basic import Dropout, Linear, make_norm
from npllm.layers.module import Module

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's
    "gelu_exact": lambda x: F.gelu(x, approximate="none"),  # erf, nanoGPT's nn.GELU()
    "relu": F.relu,  # GuppyLM's
}


class MLP(Module):
    """c_fc (C -> hidden), activation, c_proj (hidden -> C), dropout. With activation
    "swiglu" (Llama's): down(silu(gate(x)) * up(x)), three projections."""

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
        names: Naming = GPT2_NAMES,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS and activation != "swiglu":
            raise ConfigError(
                f"unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)} or swiglu"
            )
        self.activation = activation
        linear = dict(rng=rng, dtype=dtype)
        # transformers' order: gate_proj, up_proj, down_proj
        gate = Linear(n_embd, hidden, bias, std=std, **linear) if activation == "swiglu" else None
        up = Linear(n_embd, hidden, bias, std=std, **linear)
        down = Linear(hidden, n_embd, bias, std=proj_std, **linear)
        if gate is not None:
            setattr(self, names.gate, gate)
        setattr(self, names.up, up)
        setattr(self, names.down, down)
        self._parts = (gate, up, down)  # by role, for forward (a tuple is not a child)
        self.dropout = Dropout(dropout, dropout_rng)

    def forward(self, x: Tensor) -> Tensor:
        gate, up, down = self._parts
        if gate is not None:
            h = F.swiglu(gate(x), up(x))  # (B, T, hidden)
        else:
            h = ACTIVATIONS[self.activation](up(x))  # (B, T, hidden)
        return self.dropout(down(h))  # (B, T, C)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class Block(Module):
    """One transformer block: pre-norm attention and MLP, each added to the residual.
    `norm` is "layernorm" or "rmsnorm"; the attention options as `CausalSelfAttention`."""

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
        names: Naming = GPT2_NAMES,
        norm: str = "layernorm",
        eps: float = 1e-5,
        n_kv_head: int | None = None,
        rope: tuple[np.ndarray, np.ndarray] | None = None,
        window: int | None = None,
    ) -> None:
        super().__init__()
        shared = dict(
            std=std, proj_std=proj_std, rng=rng, dropout_rng=dropout_rng, dtype=dtype, names=names
        )
        attn = dict(n_kv_head=n_kv_head, rope=rope, window=window)
        # children in nanoGPT's order (state-dict order), kept by role for forward
        self._parts = (
            make_norm(norm, n_embd, bias, eps, dtype),
            CausalSelfAttention(n_embd, n_head, bias, dropout, **shared, **attn),
            make_norm(norm, n_embd, bias, eps, dtype),
            MLP(n_embd, hidden, activation, bias, dropout, **shared),
        )
        for name, part in zip((names.norm_1, names.attn, names.norm_2, names.mlp), self._parts):
            setattr(self, name, part)

    def forward(self, x: Tensor) -> Tensor:
        norm_1, attn, norm_2, mlp = self._parts
        x = x + attn(norm_1(x))  # (B, T, C)
        return x + mlp(norm_2(x))  # (B, T, C)
