"""The elementwise, normalising and loss ops of `npllm.functional` (see its docstring):
linear, the activations (ReLU, GELU, SwiGLU), softmax, the norms (LayerNorm, RMSNorm),
embedding, cross-entropy and dropout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from npllm import kernels as K
from npllm.autograd.engine import Context, Function, Tensor
from npllm.errors import ConfigError, ShapeError


def _to_last(x: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Move `axis` to the end and flatten the rest: (rows, n), C-contiguous."""
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(
            f"axis {axis} is out of range for an input with {x.ndim} dimensions; "
            f"use an axis in [{-x.ndim}, {x.ndim - 1}]"
        )
    axis %= x.ndim
    moved = np.moveaxis(x, axis, -1) if axis != x.ndim - 1 else x
    return np.ascontiguousarray(moved).reshape(-1, x.shape[axis]), axis


def _from_last(y2: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Undo `_to_last`."""
    moved = list(shape)
    moved.append(moved.pop(axis))
    y = y2.reshape(moved)
    return np.moveaxis(y, -1, axis) if axis != len(shape) - 1 else y


def _int_array(a: Any, what: str) -> np.ndarray:
    arr = a.data if isinstance(a, Tensor) else np.asarray(a)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ShapeError(
            f"{what} must be integers, got dtype {arr.dtype}; cast them with astype(np.int64)"
        )
    return arr.astype(np.int64, copy=False)


# ---- linear ----------------------------------------------------------------------------
class Linear(Function):
    fresh_grads = True
    writes_grad_homes = True  # the weight gradient, into an optimizer's flat buffer

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        if w.ndim != 2 or x.ndim == 0 or x.shape[-1] != w.shape[1]:
            raise ShapeError(
                f"linear: input of shape {x.shape} does not fit weight of shape {w.shape}; "
                "the weight is (out_features, in_features) and the input's last dimension "
                "must equal in_features"
            )
        if b is not None and b.shape != (w.shape[0],):
            raise ShapeError(f"linear: bias of shape {b.shape} should be ({w.shape[0]},)")
        x2 = x.reshape(-1, x.shape[-1])  # (N, in): one GEMM for all leading dims
        ctx.save_for_backward(x2, w)
        ctx.lead = x.shape[:-1]
        out = K.linear_forward(x2, w, b)  # (N, out)
        return out.reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # out = x @ w.T + b  =>  dx = g @ w, dw = g^T @ x, db = g summed over rows
        # (docs/backprop.md "Matmul" and "Linear")
        x2, w = ctx.saved
        need = ctx.needs_input_grad
        g2 = g.reshape(-1, w.shape[0])
        dw_home = ctx.homes[1] if ctx.homes else None
        dx, dw, db = K.linear_backward(g2, x2, w, *need, dw_out=dw_home)
        return (dx.reshape(*ctx.lead, w.shape[1]) if dx is not None else None), dw, db


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x (..., in) @ w.T + b with w (out, in), b (out,) -> (..., out)."""
    return Linear.apply(x, w, b)


# ---- activations -----------------------------------------------------------------------
class ReLU(Function):
    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        y = K.relu_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # y = max(x, 0)  =>  dx = dy * (y > 0)
        (y,) = ctx.saved
        return K.relu_backward(g, y)


def relu(x: Tensor) -> Tensor:
    return ReLU.apply(x)


class GELU(Function):
    @staticmethod
    def forward(ctx: Context, x: np.ndarray, approximate: str = "tanh") -> np.ndarray:
        if approximate not in ("tanh", "none"):
            raise ConfigError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return K.gelu_forward(x, approximate)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # y = x Phi(x)  =>  dx = dy (Phi(x) + x phi(x)), phi = Phi' the normal density;
        # y = 0.5 x (1 + t), t = tanh(k (x + c x^3))  =>
        # dx = dy (0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2))  (docs/backprop.md "GELU")
        (x,) = ctx.saved
        return K.gelu_backward(g, x, ctx.approximate)


def gelu(x: Tensor, approximate: str = "tanh") -> Tensor:
    """GELU; approximate="tanh" (GPT-2's) or "none" (exact, with erf)."""
    return GELU.apply(x, approximate=approximate)


# ---- softmax ---------------------------------------------------------------------------
class Softmax(Function):
    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axis: int = -1, log: bool = False) -> np.ndarray:
        x2, ax = _to_last(x, axis)
        y2 = (K.log_softmax_forward if log else K.softmax_forward)(x2)
        ctx.save_for_backward(y2)
        ctx.axis, ctx.shape, ctx.log = ax, x.shape, log
        return _from_last(y2, x.shape, ax)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # y = softmax(x)  =>  dx = y * (dy - sum(dy * y));  y = log_softmax(x)  =>
        # dx = dy - exp(y) * sum(dy); sums along ctx.axis (docs/backprop.md "Softmax")
        (y2,) = ctx.saved
        g2, _ = _to_last(g, ctx.axis)
        dx2 = (K.log_softmax_backward if ctx.log else K.softmax_backward)(g2, y2)
        return _from_last(dx2, ctx.shape, ctx.axis)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    return Softmax.apply(x, axis=axis, log=False)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    return Softmax.apply(x, axis=axis, log=True)


# ---- layer norm ------------------------------------------------------------------------
class LayerNorm(Function):
    fresh_grads = True

    @staticmethod
    def forward(
        ctx: Context, x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, eps: float
    ):
        c = x.shape[-1]
        for name, p in (("weight", w), ("bias", b)):
            if p is not None and p.shape != (c,):
                raise ShapeError(
                    f"layer_norm: {name} of shape {p.shape} does not fit an input whose last "
                    f"dimension is {c}; it must be ({c},)"
                )
        x2 = x.reshape(-1, c)
        out, mean, rstd = K.layernorm_forward(x2, w, b, eps)
        ctx.save_for_backward(x2, mean, rstd, w)
        ctx.shape = x.shape
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # out = xhat * w + b, xhat = (x - mean) * rstd  =>  dxhat = g * w,
        # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
        # dw = sum_rows(g * xhat), db = sum_rows(g)  (docs/backprop.md "Layer norm")
        x2, mean, rstd, w = ctx.saved
        dx, dw, db = K.layernorm_backward(g.reshape(x2.shape), x2, mean, rstd, w)
        return dx.reshape(ctx.shape), dw, db


def layer_norm(x: Tensor, w: Tensor | None, b: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Normalise over the last dimension; w and b (C,) may be None."""
    return LayerNorm.apply(x, w, b, eps=eps)


# ---- embedding -------------------------------------------------------------------------
class Embedding(Function):
    fresh_grads = True

    @staticmethod
    def forward(ctx: Context, w: np.ndarray, idx: Any) -> np.ndarray:
        ids = _int_array(idx, "embedding ids")
        if w.ndim != 2:
            raise ShapeError(f"embedding: weight must be (V, C), got shape {w.shape}")
        v = w.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= v):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ShapeError(
                f"embedding: id {bad} is out of range for a table of V={v} rows; "
                f"ids must lie in [0, {v - 1}] (check the tokenizer's vocab_size)"
            )
        flat = ids.reshape(-1)
        ctx.save_for_backward(flat)
        ctx.num = w.shape[0]
        return K.embedding_forward(flat, w).reshape(*ids.shape, w.shape[1])

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = w[idx]  =>  dw = zeros; dw[idx[n]] += g[n] for every n (repeats add up)
        (flat,) = ctx.saved
        return K.embedding_backward(g.reshape(flat.shape[0], -1), flat, ctx.num)


def embedding(idx: Any, w: Tensor) -> Tensor:
    """Rows of w (V, C) at the integer ids idx (any shape) -> (*idx.shape, C)."""
    return Embedding.apply(w, idx=idx)


# ---- cross-entropy ---------------------------------------------------------------------
class CrossEntropy(Function):
    @staticmethod
    def forward(ctx: Context, logits: np.ndarray, targets: Any, ignore_index: int) -> np.ndarray:
        t = _int_array(targets, "cross_entropy targets")
        if logits.ndim < 2 or t.shape != logits.shape[:-1]:
            raise ShapeError(
                f"cross_entropy: targets of shape {t.shape} do not fit logits of shape "
                f"{logits.shape}; targets must have the logits' shape without the last (V) "
                "dimension"
            )
        v = logits.shape[-1]
        kept = t[t != ignore_index]
        if kept.size and (kept.min() < 0 or kept.max() >= v):
            bad = int(kept.min()) if kept.min() < 0 else int(kept.max())
            raise ShapeError(
                f"cross_entropy: target {bad} is out of range for V={v} classes; targets must "
                f"lie in [0, {v - 1}] or equal ignore_index={ignore_index}"
            )
        l2 = logits.reshape(-1, v)
        t1 = t.reshape(-1)
        loss, lse = K.cross_entropy_forward(l2, t1, ignore_index)
        ctx.save_for_backward(l2, t1, lse)
        ctx.shape, ctx.ignore_index = logits.shape, ignore_index
        return loss

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # loss = mean_kept(logsumexp(logits) - logits[target])  =>
        # dlogits = g * (softmax(logits) - onehot(target)) / n_kept, 0 on ignored rows
        l2, t1, lse = ctx.saved
        return K.cross_entropy_backward(g, l2, t1, lse, ctx.ignore_index).reshape(ctx.shape)


def cross_entropy(logits: Tensor, targets: Any, ignore_index: int = -1) -> Tensor:
    """Mean cross-entropy of logits (N, V) or (B, T, V) against int targets (N,) or (B, T),
    over the targets that are not `ignore_index` (0, with zero gradient, if all are)."""
    return CrossEntropy.apply(logits, targets=targets, ignore_index=int(ignore_index))


# ---- dropout ---------------------------------------------------------------------------
class Dropout(Function):
    @staticmethod
    def forward(ctx: Context, x: np.ndarray, p: float, u: np.ndarray) -> np.ndarray:
        out, keep = K.dropout_forward(x, u, p)
        ctx.save_for_backward(keep)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = x * keep / (1 - p)  =>  dx = g * keep / (1 - p)
        (keep,) = ctx.saved
        return K.dropout_backward(g, keep, ctx.p)


def dropout(x: Tensor, p: float, training: bool, rng: np.random.Generator | None = None) -> Tensor:
    """Inverted dropout: zero each entry with probability p and scale the rest by 1/(1-p);
    the identity when not training or p == 0. `rng` (a NumPy Generator) is the only source
    of randomness; a fresh unseeded one is made when None."""
    # p is checked here, not in Dropout.forward: without training no op runs at all
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:  # everything dropped (as torch): zeros, and a zero gradient
        return x * 0.0
    rng = np.random.default_rng() if rng is None else rng
    dt = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    u = rng.random(x.shape, dtype=dt)
    return Dropout.apply(x, p=float(p), u=u)


# ---- the Llama family's norm and gating ---------------------------------------------
class RMSNorm(Function):
    @staticmethod
    def forward(ctx: Context, x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
        c = x.shape[-1]
        if w is not None and w.shape != (c,):
            raise ShapeError(
                f"rms_norm: weight of shape {w.shape} does not fit an input whose last "
                f"dimension is {c}; it must be ({c},)"
            )
        x2 = x.reshape(-1, c)
        out, rstd = K.rmsnorm_forward(x2, w, eps)
        ctx.save_for_backward(x2, rstd, w)
        ctx.shape = x.shape
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # out = xhat * w, xhat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps)  =>
        # dxhat = g * w, dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), dw = sum_rows(g * xhat)
        x2, rstd, w = ctx.saved
        dx, dw = K.rmsnorm_backward(g.reshape(x2.shape), x2, rstd, w)
        return dx.reshape(ctx.shape), dw


def rms_norm(x: Tensor, w: Tensor | None, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * w over the last dimension; w (C,) may be None."""
    return RMSNorm.apply(x, w, eps=eps)


class SwiGLU(Function):
    @staticmethod
    def forward(ctx: Context, g: np.ndarray, u: np.ndarray) -> np.ndarray:
        if g.shape != u.shape:
            raise ShapeError(f"swiglu: gate {g.shape} and up {u.shape} must have one shape")
        ctx.save_for_backward(g, u)
        return K.swiglu_forward(g, u)

    @staticmethod
    def backward(ctx: Context, dy: np.ndarray) -> tuple:
        # y = silu(g) * u, silu(g) = g s, s = sigmoid(g)  =>  du = dy * silu(g),
        # dg = dy * u * s * (1 + g * (1 - s))
        g, u = ctx.saved
        return K.swiglu_backward(dy, g, u)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up, Llama's MLP gating (silu(g) = g * sigmoid(g))."""
    return SwiGLU.apply(gate, up)
