"""`CausalSelfAttention`, written out as nanoGPT's: one fused `c_attn` projection to
q, k, v; heads split, attended under a causal mask, merged; the `c_proj` projection.
Under the Llama names (`npllm.arch`) q, k and v are three projections, `q_proj`,
`k_proj`, `v_proj`, and the output one is `o_proj`.

Options of the Llama family: `n_kv_head` < n_head key/value heads (grouped-query; 1 is
multi-query), each serving n_head / n_kv_head query heads (`F.repeat_kv`); `rope`, the
(cos, sin) tables of rotary position embedding applied to q and k (`F.rope`); `window`,
sliding-window attention over the last `window` positions.

The attention itself is `F.scaled_dot_product_attention` (one fused op with a hand-written
backward). Only when training with attention dropout does it run as explicit ops
(scores, mask, softmax, dropout, weighted sum), because dropout on the attention
probabilities has to sit between the softmax and the product with v.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import npllm.functional as F
from npllm.arch import GPT2_NAMES, Naming
from npllm.autograd.engine import Tensor
from npllm.autograd.ops import split
from npllm.errors import ConfigError, ShapeError
from npllm.layers.basic import Dropout, Linear
from npllm.layers.module import Module


class CausalSelfAttention(Module):
    def __init__(
        self,
        n_embd: int,
        n_head: int,
        bias: bool = True,
        dropout: float = 0.0,
        *,
        std: float = 0.02,
        proj_std: float = 0.02,
        rng: np.random.Generator | None = None,
        dropout_rng: np.random.Generator | None = None,
        dtype: Any = np.float32,
        names: Naming = GPT2_NAMES,
        n_kv_head: int | None = None,
        rope: tuple[np.ndarray, np.ndarray] | None = None,
        window: int | None = None,
    ) -> None:
        super().__init__()
        if n_head <= 0 or n_embd % n_head:
            raise ConfigError(
                f"n_embd ({n_embd}) must be a positive multiple of n_head ({n_head}); "
                "change one of them"
            )
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_kv_head <= 0 or n_head % n_kv_head:
            raise ConfigError(
                f"n_kv_head ({n_kv_head}) must divide n_head ({n_head}); each key/value "
                "head serves n_head / n_kv_head query heads"
            )
        self.n_embd, self.n_head, self.n_kv_head = n_embd, n_head, n_kv_head
        self._rope, self.window = rope, window
        linear = dict(rng=rng, dtype=dtype)
        kv = n_kv_head * (n_embd // n_head)
        # q, k and v for all heads in one matmul, or one each (its name's family decides)
        widths = [n_embd, kv, kv] if len(names.qkv) == 3 else [n_embd + 2 * kv]
        qkv = [Linear(n_embd, w, bias, std=std, **linear) for w in widths]
        out = Linear(n_embd, n_embd, bias, std=proj_std, **linear)
        for name, lin in zip((*names.qkv, names.attn_out), (*qkv, out)):
            setattr(self, name, lin)
        # the same modules by role, for forward (a tuple is not a child: no second name)
        self._qkv, self._out = tuple(qkv), (out,)
        self.attn_dropout = Dropout(dropout, dropout_rng)
        self.resid_dropout = Dropout(dropout, dropout_rng)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.n_embd:
            raise ShapeError(
                f"CausalSelfAttention expects input (B, T, {self.n_embd}), got {x.shape}"
            )
        B, T, C = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, C // self.n_head
        drop = self.attn_dropout.p if self.training else 0.0
        if len(self._qkv) == 1 and self._rope is None and nkv == nh:
            # the heads read from and written to their places side by side (no copies)
            qkv = self._qkv[0](x)  # (B, T, 3C)
            y = F.attention_qkv(qkv, nh, self.window, drop, self.attn_dropout.rng)  # (B, T, C)
            return self.resid_dropout(self._out[0](y))
        if len(self._qkv) == 3:
            q, k, v = (lin(x) for lin in self._qkv)  # (B, T, C), 2 x (B, T, nkv hs)
            rope = None if self._rope is None else (self._rope[0][:T], self._rope[1][:T])
            rng = self.attn_dropout.rng
            y = F.attention_heads(q, k, v, nh, nkv, rope, self.window, drop, rng)  # (B, T, C)
            return self.resid_dropout(self._out[0](y))
        # one q|k|v linear with RoPE or grouped-query heads: the explicit path
        qkv = self._qkv[0](x)  # (B, T, C + 2 nkv hs)
        q, k, v = split(qkv, [C, C + nkv * hs], axis=2)
        q = q.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        k = k.reshape(B, T, nkv, hs).transpose(0, 2, 1, 3)  # (B, nkv, T, hs)
        v = v.reshape(B, T, nkv, hs).transpose(0, 2, 1, 3)  # (B, nkv, T, hs)
        if self._rope is not None:
            cos, sin = self._rope[0][:T], self._rope[1][:T]  # (T, hs/2)
            q, k = F.rope(q, cos, sin), F.rope(k, cos, sin)
        if nkv != nh:
            k, v = F.repeat_kv(k, nh // nkv), F.repeat_kv(v, nh // nkv)  # (B, nh, T, hs)
        if drop > 0.0:
            y = self._attend_with_dropout(q, k, v)  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, causal=True, window=self.window)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # heads side by side again
        return self.resid_dropout(self._out[0](y))  # (B, T, C)

    def _attend_with_dropout(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        T, hs = q.shape[-2], q.shape[-1]
        att = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
        # -inf above the diagonal: position t sees only positions <= t (and > t - window)
        mask = np.triu(np.full((T, T), -np.inf, dtype=q.dtype), k=1)
        if self.window:
            mask += np.tril(np.full((T, T), -np.inf, dtype=q.dtype), k=-self.window)
        att = F.softmax(att + mask, axis=-1)  # (B, nh, T, T)
        att = self.attn_dropout(att)
        return att @ v  # (B, nh, T, hs)

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, n_head={self.n_head}, n_kv_head={self.n_kv_head}"
