"""The basic layers: `Linear`, `Embedding`, `LayerNorm`, `Dropout`.

Each is a thin `Module` over one op of `npllm.functional`, where the forward/backward pair
lives. Weights start as normal(0, std) drawn from the generator you pass (the GPT passes
its own, so a seed fixes the whole init); without one, a fresh unseeded generator is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import npllm.functional as F
from npllm.autograd.engine import Tensor
from npllm.errors import ConfigError
from npllm.layers.module import Module


def normal_param(
    shape: tuple[int, ...], std: float, rng: np.random.Generator | None, dtype: Any
) -> Tensor:
    """normal(0, std) drawn in float64 and then cast, so a seed gives the same init in
    every dtype (float32's own sampler would draw a different stream)."""
    rng = np.random.default_rng() if rng is None else rng
    return Tensor((rng.standard_normal(shape) * std).astype(dtype), requires_grad=True)


def constant_param(shape: tuple[int, ...], value: float, dtype: Any) -> Tensor:
    return Tensor(np.full(shape, value, dtype=dtype), requires_grad=True)


class Linear(Module):
    """y = x @ W.T + b with W of shape (out_features, in_features), as torch.nn.Linear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        std: float = 0.02,
        rng: np.random.Generator | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = normal_param((out_features, in_features), std, rng, dtype)
        self.bias = constant_param((out_features,), 0.0, dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)  # (..., out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table: row `i` of `weight` (num_embeddings, embedding_dim) for id `i`."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        std: float = 0.02,
        rng: np.random.Generator | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = normal_param((num_embeddings, embedding_dim), std, rng, dtype)

    def forward(self, idx: np.ndarray) -> Tensor:
        return F.embedding(idx, self.weight)  # (*idx.shape, embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """LayerNorm over the last dimension, weight one and bias zero (or no bias)."""

    def __init__(
        self, ndim: int, bias: bool = True, eps: float = 1e-5, *, dtype: Any = np.float32
    ) -> None:
        super().__init__()
        self.ndim, self.eps = ndim, eps
        self.weight = constant_param((ndim,), 1.0, dtype)
        self.bias = constant_param((ndim,), 0.0, dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.ndim}, bias={self.bias is not None}"


class RMSNorm(Module):
    """RMSNorm over the last dimension (Llama's): x / sqrt(mean(x^2) + eps) * weight,
    weight one, no bias."""

    def __init__(self, ndim: int, eps: float = 1e-6, *, dtype: Any = np.float32) -> None:
        super().__init__()
        self.ndim, self.eps = ndim, eps
        self.weight = constant_param((ndim,), 1.0, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.ndim}, eps={self.eps}"


def make_norm(kind: str, ndim: int, bias: bool, eps: float, dtype: Any) -> Module:
    """The norm a config asks for: "layernorm" (with bias if `bias`) or "rmsnorm"."""
    if kind == "rmsnorm":
        return RMSNorm(ndim, eps, dtype=dtype)
    return LayerNorm(ndim, bias, eps, dtype=dtype)


class Dropout(Module):
    """Zeroes entries with probability `p` in training (scaling the rest by 1/(1-p));
    the identity in eval mode. Masks come from `rng`, a generator the model owns."""

    def __init__(self, p: float = 0.0, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rng = np.random.default_rng() if rng is None else rng

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return F.dropout(x, self.p, self.training, rng=self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"
