"""The basic differentiable ops behind `Tensor`'s operators and methods.

Each backward sits under its forward and quotes the line it inverts. Gradients may be
returned in the broadcast shape: the engine sums them back to each input's shape.
Backwards never write into the incoming gradient (it may be shared or read-only).
`Tensor.relu` is `F.relu` (npllm/functional/basic.py), the one ReLU, on the kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from npllm import kernels
from npllm.autograd.engine import Context, Function, Tensor
from npllm.errors import ShapeError
from npllm.kernels.blas import batched_matmul


def _broadcasting(name: str, op: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`op(a, b)`, with NumPy's broadcast failure turned into an error naming both shapes."""
    try:
        return op(a, b)
    except ValueError:
        raise ShapeError(
            f"{name}: shapes {a.shape} and {b.shape} do not broadcast; make trailing "
            "dimensions equal or 1 (reshape one operand)"
        ) from None


class Add(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.shape == b.shape and a.dtype == b.dtype and a.dtype.kind == "f":
            return kernels.add(a, b)  # the residual stream's, on the pool
        return _broadcasting("add", np.add, a, b)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # out = a + b  =>  da = g, db = g (each shaped like out; the engine sums the
        # broadcast axes back to each input's shape, docs/backprop.md "Broadcasting")
        return g, g


class Sub(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _broadcasting("sub", np.subtract, a, b)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # out = a - b  =>  da = g, db = -g
        return g, (-g if ctx.needs_input_grad[1] else None)


class Mul(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ctx.save_for_backward(a, b)
        return _broadcasting("mul", np.multiply, a, b)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # out = a * b  =>  da = g * b, db = g * a
        a, b = ctx.saved
        ga = g * b if ctx.needs_input_grad[0] else None
        gb = g * a if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ctx.save_for_backward(a, b)
        return _broadcasting("div", np.divide, a, b)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # out = a / b  =>  da = g / b, db = -g * a / b^2
        a, b = ctx.saved
        ga = g / b if ctx.needs_input_grad[0] else None
        gb = -g * a / (b * b) if ctx.needs_input_grad[1] else None
        return ga, gb


class Pow(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = _broadcasting("pow", np.power, a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # out = a ** b  =>  da = g * b * a^(b - 1), db = g * out * ln(a)
        a, b, out = ctx.saved
        ga = g * b * a ** (b - 1) if ctx.needs_input_grad[0] else None
        gb = g * out * np.log(a) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray) -> np.ndarray:
        return -a

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = -a  =>  da = -g
        return -g


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b; stacks of float matrices with the same batch dimensions go to
    `kernels.blas.batched_matmul` (Numba's thread pool, as every other kernel) unless the
    NumPy backend is selected."""
    batched = a.ndim >= 3 and a.shape[:-2] == b.shape[:-2] and a.dtype == b.dtype
    if batched and a.dtype in (np.float32, np.float64) and kernels.backend() != "numpy":
        return batched_matmul(a, b)
    return a @ b


class MatMul(Function):
    """NumPy's matmul: batched with broadcast batch dimensions; 1-D operands are promoted
    to a row (left) or a column (right) and the added axis is dropped again."""

    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ShapeError(
                f"matmul: shapes {a.shape} and {b.shape} do not fit (inner dimensions must "
                "be equal); transpose or reshape one operand"
            )
        try:
            out = _matmul(a, b)
        except ValueError:
            raise ShapeError(
                f"matmul: batch dimensions of {a.shape} and {b.shape} do not broadcast"
            ) from None
        ctx.save_for_backward(a, b)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # out = a @ b  =>  da = g @ b^T, db = a^T @ g (out_ij = sum_k a_ik b_kj; docs/backprop.md
        # "Matmul"); 1-D operands are promoted to matrices first, as the forward did
        a, b = ctx.saved
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g[..., None] if b.ndim == 1 else g
        g2 = np.expand_dims(g2, -2) if a.ndim == 1 else g2
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = _matmul(g2, np.swapaxes(b2, -1, -2))
            ga = ga[..., 0, :] if a.ndim == 1 else ga
        if ctx.needs_input_grad[1]:
            gb = _matmul(np.swapaxes(a2, -1, -2), g2)
            gb = gb[..., 0] if b.ndim == 1 else gb
        return ga, gb


def _axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """Normalise a reduction's `axis` to sorted non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(
                f"axis {a} is out of range for a tensor with {ndim} dimensions; "
                f"use an axis in [{-ndim}, {ndim - 1}]"
            )
    return tuple(sorted(int(a) % ndim for a in axes))


def _expand(g: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Put back the reduced axes of a reduction's gradient as size-1 dimensions."""
    return g if keepdims else np.expand_dims(g, axes)


class Sum(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray, axis: Any = None, keepdims: bool = False):
        ctx.axes, ctx.keepdims, ctx.shape = _axes(axis, a.ndim), keepdims, a.shape
        return np.sum(a, axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = a.sum(axes)  =>  da = g broadcast back over the summed axes (d out / d a_i = 1)
        return np.broadcast_to(_expand(g, ctx.axes, ctx.keepdims), ctx.shape)


class Mean(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray, axis: Any = None, keepdims: bool = False):
        ctx.axes, ctx.keepdims, ctx.shape = _axes(axis, a.ndim), keepdims, a.shape
        return np.mean(a, axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = a.sum(axes) / n  =>  da = g / n broadcast back over the averaged axes
        n = int(np.prod([ctx.shape[i] for i in ctx.axes]))
        return np.broadcast_to(_expand(g, ctx.axes, ctx.keepdims) / max(n, 1), ctx.shape)


class Max(Function):
    """Ties share the gradient equally (as torch.amax), so the gradient stays a true
    subgradient and gradcheck-able away from ties."""

    @staticmethod
    def forward(ctx: Context, a: np.ndarray, axis: Any = None, keepdims: bool = False):
        axes = _axes(axis, a.ndim)
        if a.size == 0:
            raise ShapeError(f"max of an empty tensor of shape {a.shape} is undefined")
        out = np.max(a, axis=axes, keepdims=True)
        ctx.axes, ctx.keepdims = axes, keepdims
        ctx.save_for_backward(a == out)
        return out if keepdims else np.squeeze(out, axis=axes)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = a.max(axes)  =>  da_i = g * [a_i == out] / (number of ties): g flows to the
        # maxima, split among ties
        (mask,) = ctx.saved
        share = mask / mask.sum(axis=ctx.axes, keepdims=True)
        return _expand(g, ctx.axes, ctx.keepdims) * share.astype(g.dtype, copy=False)


class Reshape(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        ctx.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ShapeError(
                f"cannot reshape a tensor of shape {a.shape} ({a.size} elements) into "
                f"{tuple(shape)}; the sizes must match (use -1 for one inferred dimension)"
            ) from None

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = a.reshape(shape)  =>  da = g.reshape(a.shape): same entries, same order
        return g.reshape(ctx.shape)


class Transpose(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray, axes: tuple[int, ...] | None = None):
        axes = tuple(reversed(range(a.ndim))) if axes is None else tuple(axes)
        if sorted(int(x) % max(a.ndim, 1) for x in axes) != list(range(a.ndim)):
            raise ShapeError(
                f"transpose axes {axes} are not a permutation of the {a.ndim} dimensions of "
                f"a tensor of shape {a.shape}"
            )
        ctx.axes = axes
        return np.transpose(a, axes)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = a.transpose(axes)  =>  da = g.transpose(inverse permutation of axes)
        return np.transpose(g, np.argsort([x % g.ndim for x in ctx.axes]))


def _is_basic(key: Any) -> bool:
    items = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice)) for k in items)


class GetItem(Function):
    """Basic and advanced indexing. Repeated indices accumulate in the backward."""

    @staticmethod
    def forward(ctx: Context, a: np.ndarray, key: Any) -> np.ndarray:
        ctx.key, ctx.shape = key, a.shape
        try:
            return a[key]
        except IndexError as e:
            raise ShapeError(
                f"index {key!r} does not fit a tensor of shape {a.shape}: {e}"
            ) from None

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = a[key]  =>  da = zeros(a.shape); da[key] += g: a scatter-add, so an entry
        # picked k times gets the sum of its k gradients (docs/backprop.md "Indexing")
        out = np.zeros(ctx.shape, dtype=g.dtype)
        if _is_basic(ctx.key):
            out[ctx.key] = g
        else:
            np.add.at(out, ctx.key, g)
        return out


class Concatenate(Function):
    @staticmethod
    def forward(ctx: Context, *arrays: np.ndarray, axis: int = 0) -> np.ndarray:
        if not arrays:
            raise ShapeError("concatenate needs at least one tensor")
        try:
            out = np.concatenate(arrays, axis=axis)
        except ValueError:
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise ShapeError(
                f"concatenate along axis {axis}: shapes {shapes} must match except on that axis"
            ) from None
        ctx.axis = axis % out.ndim
        ctx.sections = np.cumsum([a.shape[ctx.axis] for a in arrays])[:-1]
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple:
        # out = concatenate(arrays, axis)  =>  split g at the same boundaries
        return tuple(np.split(g, ctx.sections, axis=ctx.axis))


class Exp(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray) -> np.ndarray:
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = exp(a)  =>  da = g * out
        (out,) = ctx.saved
        return g * out


class Log(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray) -> np.ndarray:
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = log(a)  =>  da = g / a
        (a,) = ctx.saved
        return g / a


class Tanh(Function):
    @staticmethod
    def forward(ctx: Context, a: np.ndarray) -> np.ndarray:
        out = np.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> np.ndarray:
        # out = tanh(a)  =>  da = g * (1 - out^2)
        (out,) = ctx.saved
        return g * (1 - out * out)


def concatenate(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """`np.concatenate` for tensors; the gradient is split back to each input."""
    return Concatenate.apply(*tensors, axis=axis)


def split(x: Tensor, indices_or_sections: int | Sequence[int], axis: int = 0) -> list[Tensor]:
    """`np.split` for tensors: views of `x` whose gradients land in the right slices."""
    n = x.shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        if indices_or_sections <= 0 or n % indices_or_sections:
            raise ShapeError(
                f"cannot split a dimension of size {n} into {indices_or_sections} equal parts; "
                "pass split points instead"
            )
        step = n // indices_or_sections
        bounds = list(range(0, n + 1, step)) if step else [0] * (indices_or_sections + 1)
    else:
        bounds = [0, *indices_or_sections, n]
    axis = axis % x.ndim
    lead = (slice(None),) * axis
    return [x[(*lead, slice(lo, hi))] for lo, hi in zip(bounds[:-1], bounds[1:])]
