"""`GPTConfig` and `GPT`: nanoGPT's model (model.py) on npllm's layers.

token + position embeddings -> n_layer pre-LayerNorm blocks -> ln_f -> lm_head, whose
weight *is* the token embedding's (tied: one array, its gradient the sum of both uses).
State-dict keys match nanoGPT's, so weights move to and from PyTorch by name; the model
description (`npllm.arch`) names every part, and the decoder and quantizer read it too.
See docs/architecture.md, "Layers and the model".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import npllm.functional as F
from npllm import arch
from npllm.autograd.engine import Tensor
from npllm.errors import ConfigError, DataError, ShapeError
from npllm.layers import Block, Dropout, Embedding, Linear, Module, ModuleDict
from npllm.layers.basic import make_norm
from npllm.layers.block import ACTIVATIONS
from npllm.layers.module import ModuleList
from npllm.layers.rope import check_rope_scaling, config_rope, rope_tables
from npllm.optim import AdamW


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    mlp_hidden: int | None = None  # None: 4 * n_embd
    activation: str = "gelu"  # "gelu" (tanh approximation), "gelu_exact" (erf), "relu"
    # The Llama family's options (docs/architecture.md); the defaults are GPT-2's.
    pos_embedding: str = "learned"  # "learned" (wpe) or "rope" (transformers' Llama names)
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # transformers' dict: {"rope_type": "linear", "factor": 2}
    norm: str = "layernorm"  # or "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str | None = None  # None: c_fc, activation, c_proj; "swiglu": gate/up/down
    n_kv_head: int | None = None  # None: n_head; fewer: grouped-query (1: multi-query)
    sliding_window: int | None = None  # attend to the last W positions only
    tie_embeddings: bool = True  # lm_head shares the token embedding

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                "each head gets n_embd / n_head channels"
            )
        if self.mlp_hidden is not None and (
            not isinstance(self.mlp_hidden, (int, np.integer)) or self.mlp_hidden <= 0
        ):
            raise ConfigError(
                f"GPTConfig.mlp_hidden must be a positive integer or None, got {self.mlp_hidden!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"GPTConfig.activation {self.activation!r} is unknown; "
                f"use one of {', '.join(ACTIVATIONS)}"
            )
        self._check_llama_options()

    def _check_llama_options(self) -> None:
        if self.mlp in ACTIVATIONS:  # mlp="relu" is a plain MLP with that activation
            self.activation, self.mlp = self.mlp, None
        choices = {
            "pos_embedding": ("learned", "rope"),
            "norm": tuple(arch.NORMS),
            "mlp": (None, "swiglu"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                shown = ", ".join(str(a) for a in allowed if a) + (
                    " or none" if None in allowed else ""
                )
                raise ConfigError(
                    f"GPTConfig.{name} {getattr(self, name)!r} is unknown; use {shown}"
                )
        hs = self.n_embd // self.n_head
        if self.pos_embedding == "rope" and hs % 2:
            raise ConfigError(
                f"RoPE turns channel pairs, so the head size n_embd / n_head must be even, "
                f"got {hs}; change n_embd or n_head"
            )
        check_rope_scaling(self.rope_scaling)
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 1):
            raise ConfigError(f"GPTConfig.rope_theta must be a number > 1, got {self.rope_theta!r}")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise ConfigError(f"GPTConfig.norm_eps must be > 0, got {self.norm_eps!r}")
        for name in ("n_kv_head", "sliding_window"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0
            ):
                raise ConfigError(
                    f"GPTConfig.{name} must be a positive integer or None, got {value!r}"
                )
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ConfigError(
                f"GPTConfig.n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}); "
                "each key/value head serves n_head / n_kv_head query heads"
            )

    @property
    def hidden(self) -> int:
        return 4 * self.n_embd if self.mlp_hidden is None else self.mlp_hidden


class GPT(Module):
    """A GPT language model. `seed` fixes the init and the dropout masks (each from its own
    stream of one `SeedSequence`); parameters are float32 unless `dtype` says otherwise."""

    def __init__(self, config: GPTConfig, seed: int = 0, dtype: Any = np.float32) -> None:
        super().__init__()
        self.config = config
        init_seq, dropout_seq = np.random.SeedSequence(seed).spawn(2)
        rng = np.random.default_rng(init_seq)
        self.rng = np.random.default_rng(dropout_seq)  # every Dropout draws from this one
        c = config
        # GPT-2's scaled init: each block adds two projections to the residual stream
        proj_std = 0.02 / math.sqrt(2 * c.n_layer)
        common = dict(rng=rng, dtype=dtype)
        names = arch.naming(c)
        wte = Embedding(c.vocab_size, c.n_embd, **common)
        parts: dict[str, Module] = {names.embed: wte}
        if names.pos:
            parts[names.pos] = Embedding(c.block_size, c.n_embd, **common)
        # RoPE's angle tables for positions [0, block_size), shared by every block
        rope = (
            rope_tables(np.arange(c.block_size), *config_rope(c))
            if names is arch.LLAMA_NAMES
            else None
        )
        blocks = ModuleList(
            Block(
                c.n_embd,
                c.n_head,
                c.hidden,
                arch.activation(c),
                c.bias,
                c.dropout,
                proj_std=proj_std,
                dropout_rng=self.rng,
                names=names,
                norm=c.norm,
                eps=c.norm_eps,
                n_kv_head=c.n_kv_head,
                rope=rope,
                window=c.sliding_window,
                **common,
            )
            for _ in range(c.n_layer)
        )
        norm_f = make_norm(c.norm, c.n_embd, c.bias, c.norm_eps, dtype)
        parts.update(
            drop=Dropout(c.dropout, self.rng), **{names.layers: blocks, names.norm_f: norm_f}
        )
        setattr(self, names.root, ModuleDict(**parts))
        self.lm_head = Linear(c.n_embd, c.vocab_size, bias=False, **common)
        if c.tie_embeddings:
            self.lm_head.weight = wte.weight  # tied: the same Tensor
        # the parts by role, for forward (a tuple is not a child: no second name)
        self._parts = (wte, parts.get(names.pos), parts["drop"], blocks, parts[names.norm_f])

    def forward(self, idx: Any, targets: Any = None) -> tuple[Tensor, Tensor | None]:
        """idx: int (B, T) token ids -> logits (B, T, V), and the mean cross-entropy
        against `targets` (B, T) when given (-1 marks positions to ignore), else None."""
        idx = self._check_idx(idx)
        B, T = idx.shape
        wte, wpe, drop, blocks, norm_f = self._parts
        x = wte(idx)  # (B, T, C)
        if wpe is not None:
            x = x + wpe(np.arange(T))  # (T, C) positions
        x = drop(x)  # (B, T, C)
        for block in blocks:
            x = block(x)  # (B, T, C)
        x = norm_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        targets = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
        if targets.shape != idx.shape:
            raise ShapeError(
                f"targets have shape {targets.shape} but idx has {idx.shape}; "
                "give one target per input token"
            )
        return logits, F.cross_entropy(logits, targets, ignore_index=-1)

    def _check_idx(self, idx: Any) -> np.ndarray:
        idx = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
        if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
            raise ShapeError(
                f"idx must be an integer array of shape (B, T), got dtype {idx.dtype} and "
                f"shape {idx.shape}; add a batch dimension with idx[None] if needed"
            )
        T, block_size, V = idx.shape[1], self.config.block_size, self.config.vocab_size
        if T > block_size:
            raise ShapeError(
                f"sequence length {T} is longer than block_size {block_size}; "
                f"crop the input to its last {block_size} tokens"
            )
        if idx.size:
            lo, hi = int(idx.min()), int(idx.max())
            bad = lo if lo < 0 else hi
            if lo < 0 or hi >= V:
                raise DataError(
                    f"token id {bad} is out of range for vocab_size {V} (ids must be in "
                    f"[0, {V - 1}]); encode the text with the model's own tokenizer"
                )
        return idx

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count, the tied weight once. As nanoGPT, `non_embedding` leaves out
        the position embeddings; the token embeddings stay, being lm_head's weight too."""
        n = self.num_parameters()
        wpe = self._parts[1]
        if non_embedding and wpe is not None:
            n -= wpe.weight.size
        return n

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float]
    ) -> AdamW:
        """AdamW with weight decay on the 2-D weights (matmuls, embeddings) only; biases
        and LayerNorm parameters are not decayed."""
        params = self.parameters()
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return AdamW(groups, lr=learning_rate, betas=betas)

    def extra_repr(self) -> str:
        return f"{self.num_params() / 1e6:.2f}M parameters"
