"""Attention's ops in `npllm.functional` (see its docstring): scaled dot-product
attention (causal, sliding window), rotary position embedding and the key/value head
repetition of grouped-query attention.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from npllm import kernels as K
from npllm.autograd.engine import Context, Function, Tensor
from npllm.errors import ConfigError, ShapeError


def _window(window: Any, op: str) -> int:
    """A sliding window (None or an int >= 1) as the kernels take it: 0 for none."""
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise ConfigError(f"{op}: window must be None or >= 1, got {window!r}")
    return int(window or 0)


def _dropout(p: float, rng: Any, op: str) -> tuple[float, Any]:
    """Dropout on the attention probabilities as the kernels take it: p in [0, 1), and a
    fresh unseeded Generator when p > 0 and none was given."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"{op}: dropout must be in [0, 1), got {p}")
    return float(p), (np.random.default_rng() if p > 0 and rng is None else rng)


class SDPA(Function):
    @staticmethod
    def forward(
        ctx: Context, q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, window: Any
    ) -> np.ndarray:
        _window(window, "scaled_dot_product_attention")
        if (
            q.ndim != 4
            or k.shape != v.shape
            or k.ndim != 4
            or q.shape[:2] != k.shape[:2]
            or q.shape[3] != k.shape[3]
        ):
            raise ShapeError(
                f"scaled_dot_product_attention: q {q.shape}, k {k.shape}, v {v.shape} do not "
                "fit; expected q (B, nh, Tq, hs) and k, v (B, nh, Tk, hs)"
            )
        if causal and q.shape[2] > k.shape[2]:
            raise ShapeError(
                f"scaled_dot_product_attention: causal attention needs Tq <= Tk, got "
                f"Tq={q.shape[2]} and Tk={k.shape[2]}; pass at least as many keys as queries"
            )
        if k.shape[2] == 0 or q.shape[3] == 0 or q.size == 0:
            raise ShapeError(f"scaled_dot_product_attention: empty input, q {q.shape}, k {k.shape}")
        out, att = K.attention_forward(q, k, v, causal, int(window or 0))
        ctx.save_for_backward(q, k, v, att)
        ctx.causal = causal
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # att = softmax(q @ k^T / sqrt(hs) + mask), out = att @ v  =>  dv = att^T @ g,
        # datt = g @ v^T, ds = att * (datt - rowsum(datt * att)), dq = ds @ k / sqrt(hs),
        # dk = ds^T @ q / sqrt(hs); masked att entries are 0, so they pass no gradient
        q, k, v, att = ctx.saved
        return K.attention_backward(g, q, k, v, att, ctx.causal)


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = True, window: int | None = None
) -> Tensor:
    """softmax(q @ k^T / sqrt(hs) + mask) @ v for q (B, nh, Tq, hs), k, v (B, nh, Tk, hs).
    With `causal`, query i sees keys j <= i + Tk - Tq (the mask is aligned to the end, so
    Tq = 1 over a KV cache sees every cached key); a `window` W also hides keys more than
    W - 1 positions before the query (sliding-window attention)."""
    return SDPA.apply(q, k, v, causal=bool(causal), window=window)


class QKVAttention(Function):
    fresh_grads = True

    @staticmethod
    def forward(
        ctx: Context, qkv: np.ndarray, n_head: int, window: Any, p: float, rng: Any
    ) -> np.ndarray:
        if qkv.ndim != 3 or qkv.shape[2] % (3 * n_head) or qkv.shape[2] == 0:
            raise ShapeError(
                f"attention_qkv: expected (B, T, 3 * n_head * hs) with n_head={n_head}, got "
                f"{qkv.shape}; pass one linear's q, k, v side by side"
            )
        B, T = qkv.shape[:2]
        # the draws F.dropout would make on the probabilities (B, n_head, T, T)
        u = rng.random((B, n_head, T, T), dtype=qkv.dtype) if p > 0 else None
        win = _window(window, "attention_qkv")
        y, att, keep = K.attention_qkv_forward(qkv, n_head, True, win, u, p)
        ctx.save_for_backward(qkv, att)
        ctx.n_head, ctx.keep, ctx.p = n_head, keep, p
        return y

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # y = SDPA(q, k, v) per head with [q | k | v] = qkv  =>  dqkv = [dq | dk | dv],
        # SDPA's rule per head (above), each gradient written where the forward read it;
        # with dropout on the probabilities, dropout's rule between (docs/backprop.md)
        qkv, att = ctx.saved
        return K.attention_qkv_backward(g, qkv, att, ctx.n_head, True, ctx.keep, ctx.p)


def attention_qkv(
    qkv: Tensor,
    n_head: int,
    window: int | None = None,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
) -> Tensor:
    """Causal self-attention straight from one linear's output: qkv (B, T, 3C) holds q, k
    and v side by side (each C = n_head * hs wide, heads side by side within it); returns
    (B, T, C) with the heads side by side, as the output projection takes them. The same
    as splitting qkv, moving the heads to their own axis, `scaled_dot_product_attention`
    and moving them back, without the copies those moves make (and their gradients').
    `dropout` > 0 drops attention probabilities as `F.dropout` on them would, with the
    same draws from `rng` (a fresh unseeded Generator when None)."""
    p, rng = _dropout(dropout, rng, "attention_qkv")
    return QKVAttention.apply(qkv, n_head=int(n_head), window=window, p=p, rng=rng)


class HeadsAttention(Function):
    fresh_grads = True

    @staticmethod
    def forward(
        ctx: Context,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        n_head: int,
        n_kv_head: int,
        rope: Any,
        window: Any,
        p: float,
        rng: Any,
    ) -> np.ndarray:
        B, T, C = q.shape if q.ndim == 3 else (0, 0, 0)
        hs = C // n_head if n_head > 0 else 0
        if (
            q.ndim != 3
            or n_head < 1
            or n_kv_head < 1
            or n_head % n_kv_head
            or C % n_head
            or hs == 0
            or k.shape != (B, T, n_kv_head * hs)
            or v.shape != k.shape
        ):
            raise ShapeError(
                f"attention_heads: q {q.shape}, k {k.shape}, v {v.shape} do not fit n_head="
                f"{n_head}, n_kv_head={n_kv_head}; expected q (B, T, n_head hs) and k, v "
                "(B, T, n_kv_head hs), n_kv_head dividing n_head"
            )
        cos = sin = None
        if rope is not None:
            cos, sin = (np.asarray(a, q.dtype) for a in rope)
            if hs % 2 or cos.shape != (T, hs // 2) or sin.shape != (T, hs // 2):
                raise ShapeError(
                    f"attention_heads: RoPE needs an even head size and cos/sin tables of "
                    f"shape ({T}, {hs // 2}), got head size {hs} and {cos.shape}, {sin.shape}"
                )
        u = rng.random((B, n_head, T, T), dtype=q.dtype) if p > 0 else None
        win = _window(window, "attention_heads")
        y, att, keep = K.attention_heads_forward(q, k, v, n_head, n_kv_head, cos, sin, win, u, p)
        ctx.save_for_backward(q, k, v, att)
        ctx.attrs = (n_head, n_kv_head, cos, sin, keep, p)
        return y

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # y = SDPA(R q, R k, v) per head, k and v shared by each group of query heads  =>
        # SDPA's rule per head, dk and dv summed over the group (as repeat_kv's backward),
        # dq = R^T dq', dk = R^T dk' (RoPE's rule), each written where the forward read it
        q, k, v, att = ctx.saved
        n_head, n_kv_head, cos, sin, keep, p = ctx.attrs
        return K.attention_heads_backward(g, q, k, v, att, n_head, n_kv_head, cos, sin, keep, p)


def attention_heads(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    n_head: int,
    n_kv_head: int,
    rope: tuple[np.ndarray, np.ndarray] | None = None,
    window: int | None = None,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
) -> Tensor:
    """Causal self-attention from three linears' outputs, heads side by side: q (B, T,
    n_head hs), k and v (B, T, n_kv_head hs), query head h reading key/value head
    h // (n_head / n_kv_head) (grouped-query attention); `rope` the (cos, sin) tables
    (T, hs/2) that turn q and k first (`rope`). Returns (B, T, n_head hs). The same as
    moving the heads to their own axis, `rope`, `repeat_kv`, `scaled_dot_product_attention`
    and moving them back, without those copies; `dropout` as in `attention_qkv`."""
    p, rng = _dropout(dropout, rng, "attention_heads")
    return HeadsAttention.apply(
        q, k, v, n_head=int(n_head), n_kv_head=int(n_kv_head), rope=rope, window=window,
        p=p, rng=rng,
    )  # fmt: skip


class RoPE(Function):
    @staticmethod
    def forward(ctx: Context, x: np.ndarray, cos: Any, sin: Any) -> np.ndarray:
        T, hs = x.shape[-2], x.shape[-1]
        if hs % 2 or np.shape(cos) != (T, hs // 2) or np.shape(sin) != (T, hs // 2):
            raise ShapeError(
                f"rope: input (..., {T}, {hs}) needs an even head size and cos/sin tables of "
                f"shape ({T}, {hs // 2}), got {np.shape(cos)} and {np.shape(sin)}"
            )
        cos, sin = np.asarray(cos, x.dtype), np.asarray(sin, x.dtype)
        ctx.cos, ctx.sin = cos, sin
        return K.rope_forward(x, cos, sin)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # y = [x1 cos - x2 sin, x2 cos + x1 sin] = R x, a rotation  =>  dx = R^T g, the
        # turn back: dx = [g1 cos + g2 sin, g2 cos - g1 sin]  (docs/backprop.md "RoPE")
        return K.rope_backward(g, ctx.cos, ctx.sin)


def rope(x: Tensor, cos: np.ndarray, sin: np.ndarray) -> Tensor:
    """Rotary embedding of x (..., T, hs) by the angle tables cos, sin (T, hs/2)
    (`npllm.layers.rope`), transformers' rotate-half layout; the tables get no gradient."""
    return RoPE.apply(x, cos=cos, sin=sin)


class RepeatKV(Function):
    @staticmethod
    def forward(ctx: Context, x: np.ndarray, n_rep: int) -> np.ndarray:
        if x.ndim != 4:
            raise ShapeError(f"repeat_kv: expected (B, n_kv, T, hs), got {x.shape}")
        ctx.n_rep = n_rep
        return np.repeat(x, n_rep, axis=1)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # y[:, h] = x[:, h // n_rep]  =>  dx[:, j] = sum of g over the n_rep copies of head j
        B, nh, T, hs = g.shape
        return g.reshape(B, nh // ctx.n_rep, ctx.n_rep, T, hs).sum(axis=2)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs), each head n_rep times in a row: the
    keys and values of grouped-query attention, one copy per query head of the group."""
    return x if n_rep == 1 else RepeatKV.apply(x, n_rep=int(n_rep))
