"""The autograd engine: `Tensor`, `Function`, the topological backward and `no_grad`.

Read this file in one sitting, as micrograd's engine.py: a `Function` computes its output
from NumPy arrays and records a node (its class, a context, its inputs) when a gradient is
needed; `Tensor.backward` walks those nodes in reverse topological order, iteratively, and
sums broadcast dimensions back to each input's shape. The ops live in `ops.py`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any

import numpy as np

from npllm.errors import GradError, ShapeError

_grad_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("grad_enabled", default=True)


def is_grad_enabled() -> bool:
    return _grad_enabled.get()


class no_grad:
    """Context manager (and decorator) under which no graph is recorded."""

    def __enter__(self) -> no_grad:
        self._token = _grad_enabled.set(False)
        return self

    def __exit__(self, *exc: object) -> None:
        _grad_enabled.reset(self._token)

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        return wrapper


def _as_array(data: Any, dtype: Any = None) -> np.ndarray:
    """NumPy arrays and scalars keep their dtype (float64 stays float64 for gradcheck);
    Python numbers and lists of floats become float32, the library's default."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, (np.ndarray, np.generic)):
        return np.asarray(data, dtype=dtype)
    arr = np.asarray(data, dtype=dtype)
    if dtype is None and arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return arr


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` over the dimensions NumPy broadcast to reach it from `shape`."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    if lead > 0:
        grad = grad.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Context:
    """What a Function's forward leaves for its backward: `saved` arrays, plus any other
    attribute the forward sets (`ctx.axis = ...`)."""

    # For a Function with `writes_grad_homes`, set by the engine just before its backward:
    # per input, the array its gradient may be written into (a leaf's free `grad_home`,
    # see `Tensor.backward`), or None.
    homes: tuple[np.ndarray | None, ...] = ()

    def __init__(self, needs_input_grad: tuple[bool, ...]):
        self.saved: tuple[Any, ...] = ()
        self.needs_input_grad = needs_input_grad
        self.freed = False

    def save_for_backward(self, *values: Any) -> None:
        self.saved = values


class Function:
    """One differentiable op. Subclasses write `forward(ctx, *arrays, **attrs) -> array`
    and, right beside it, `backward(ctx, grad) -> one gradient (or None) per input`.
    A backward may return a gradient in the broadcast shape; the engine reduces it.
    An input may be None (an optional operand, e.g. a missing bias): forward receives
    None in its place, and whatever backward returns for it is ignored. Forward checks
    its inputs (one place for every op's checks, whoever calls `apply`)."""

    # True when backward returns only arrays it has just allocated (or the free home it
    # was given, see below), none shared with another input's gradient, the incoming
    # gradient or anything saved (both kernel backends): the engine may then hand them to
    # a leaf without a copy and add into them in place. Ops that pass their gradient
    # through (Add, Reshape) must leave it False.
    fresh_grads = False
    # True when backward may write an input's gradient straight into `ctx.homes[i]` (and
    # return that array): the linear layer's weight gradient, the bulk of all parameters'
    # gradients, then needs no copy into an optimizer's flat buffer.
    writes_grad_homes = False

    @staticmethod
    def forward(ctx: Context, *arrays: np.ndarray, **attrs: Any) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> Any:
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs: Any, **attrs: Any) -> Tensor:
        like = next((x.dtype for x in inputs if isinstance(x, Tensor)), None)
        tensors = tuple(
            x if x is None or isinstance(x, Tensor) else _constant(x, like) for x in inputs
        )
        needs = tuple(t is not None and t.requires_grad for t in tensors)
        ctx = Context(needs)
        out = cls.forward(ctx, *(None if t is None else t.data for t in tensors), **attrs)
        result = Tensor(out)
        if any(needs) and is_grad_enabled():
            result.requires_grad = True
            result._node = (cls, ctx, tensors)
        return result


def _fits(home: np.ndarray | None, t: Tensor) -> bool:
    return home is not None and home.shape == t.shape and home.dtype == t.dtype


def _free_homes(parents: Sequence[Tensor | None], grads: dict) -> tuple:
    """Per parent, its `grad_home` if the walk may write its whole gradient there now: a
    leaf needing a gradient, without one yet (`.grad` None), with no contribution to it
    seen so far in this walk, and not an earlier parent of the same node too."""
    homes = []
    for i, t in enumerate(parents):
        free = (
            t is not None
            and t._node is None
            and t.requires_grad
            and t.grad is None
            and _fits(t.grad_home, t)
            and id(t) not in grads
            and all(t is not u for u in parents[:i])
        )
        homes.append(t.grad_home if free else None)
    return tuple(homes)


def _constant(value: Any, like: np.dtype | None) -> Tensor:
    """A non-Tensor operand: Python numbers take the dtype of the Tensor they meet, so
    `x * 2.0` stays float32."""
    if like is not None and np.issubdtype(like, np.floating) and not isinstance(value, np.ndarray):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return Tensor(arr.astype(like))
    return Tensor(value)


class Tensor:
    """A NumPy array with an optional gradient and the node that produced it."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "grad_home", "__weakref__")
    __array_priority__ = 1000  # `ndarray + Tensor` defers to Tensor.__radd__

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None):
        self.data: np.ndarray = _as_array(data, dtype)
        if requires_grad and not np.issubdtype(self.data.dtype, np.floating):
            raise GradError(
                f"only floating-point tensors can require grad, got dtype {self.data.dtype}; "
                "convert the data to float32 or float64 first"
            )
        self.grad: np.ndarray | None = None
        # where backward writes this leaf's gradient when .grad is None (else a new array):
        # an optimizer's flat gradient buffer, see `backward` and npllm/optim/flat.py
        self.grad_home: np.ndarray | None = None
        self.requires_grad = requires_grad
        self._node: tuple[type[Function], Context, tuple[Tensor | None, ...]] | None = None

    # ---- array-like properties -------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}{grad})"

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        if self.data.size != 1:
            raise ShapeError(
                f"item() needs a tensor with one element, got shape {self.shape}; "
                "reduce it first (e.g. .sum())"
            )
        return self.data.item()

    def detach(self) -> Tensor:
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    # ---- backward --------------------------------------------------------------------
    def backward(
        self, grad: Any = None, retain_graph: bool = False, retain_grads: bool = False
    ) -> None:
        """Accumulate d(self)/d(leaf) * grad into `.grad` of every leaf requiring grad.
        A leaf whose `.grad` is None gets a new array, or, if it has a `grad_home` (an
        array of its shape and dtype, given by an optimizer that keeps all gradients in
        one flat buffer), the gradient is written into that array and `.grad` is it.
        Without `retain_graph` the saved arrays are released as the walk passes them.
        With `retain_grads` every intermediate tensor of the graph keeps its gradient in
        `.grad` too (as torch's `retain_grad()`), e.g. for `npllm.viz.draw_dot`."""
        if not self.requires_grad:
            raise GradError(
                "backward() called on a tensor that does not require grad; "
                "create the inputs with requires_grad=True (and not under no_grad)"
            )
        if grad is None:
            if self.data.size != 1:
                raise GradError(
                    f"backward() without a gradient needs a scalar output, got shape "
                    f"{self.shape}; reduce it (e.g. .sum()) or pass grad of shape {self.shape}"
                )
            grad = np.ones_like(self.data)
        else:
            grad = _as_array(grad, self.dtype)
            if grad.shape != self.shape:
                raise ShapeError(
                    f"backward() got a gradient of shape {grad.shape} for a tensor of shape "
                    f"{self.shape}; pass a gradient with the tensor's shape"
                )

        grads: dict[int, np.ndarray] = {id(self): grad}
        # Gradients this walk allocated itself (sums of two contributions). Only those may
        # be added into in place or handed to a leaf without a copy: any other array may
        # be shared, e.g. Add's backward returns the same `g` for both inputs.
        owned: set[int] = set()
        for node in reversed(_topological_order(self)):
            key = id(node)
            g = grads.pop(key, None)
            if g is None:
                continue
            if node._node is None:
                home = node.grad_home
                if node.grad is not None:
                    node.grad += g
                elif _fits(home, node):
                    if g is not home:  # (a backward may have written it there already)
                        np.copyto(home, g, casting="unsafe")  # as the astype below
                    node.grad = home
                elif key in owned and g.dtype == node.dtype:
                    node.grad = g
                else:
                    node.grad = g.astype(node.dtype, copy=True)
                continue
            if retain_grads:
                node.grad = np.array(g, dtype=node.dtype)  # a copy: g may be shared
            fn, ctx, parents = node._node
            if ctx.freed:
                raise GradError(
                    "backward() through a graph that was already freed; "
                    "pass retain_graph=True to the first backward() to go through it twice"
                )
            if fn.writes_grad_homes:
                ctx.homes = _free_homes(parents, grads)
            in_grads = fn.backward(ctx, g)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            if not retain_graph:
                ctx.saved = ()
                ctx.freed = True
            fresh = fn.fresh_grads
            for parent, pg in zip(parents, in_grads):
                if pg is None or parent is None or not parent.requires_grad:
                    continue
                pg = unbroadcast(np.asarray(pg), parent.shape)
                pkey = id(parent)
                if pkey not in grads:
                    grads[pkey] = pg
                    if fresh:
                        owned.add(pkey)
                elif pkey in owned:
                    grads[pkey] += pg
                elif fresh and pg.dtype == np.result_type(pg, grads[pkey]):
                    pg += grads[pkey]  # into the new array: no third one
                    grads[pkey] = pg
                    owned.add(pkey)
                else:
                    grads[pkey] = grads[pkey] + pg
                    owned.add(pkey)

    # ---- operators (the Functions are in ops.py) ---------------------------------------
    def __add__(self, other: Any) -> Tensor:
        return _ops.Add.apply(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _ops.Add.apply(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _ops.Sub.apply(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _ops.Sub.apply(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _ops.Mul.apply(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _ops.Mul.apply(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _ops.Div.apply(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _ops.Div.apply(other, self)

    def __pow__(self, other: Any) -> Tensor:
        return _ops.Pow.apply(self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return _ops.Pow.apply(other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return _ops.MatMul.apply(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _ops.MatMul.apply(other, self)

    def __neg__(self) -> Tensor:
        return _ops.Neg.apply(self)

    def __getitem__(self, key: Any) -> Tensor:
        return _ops.GetItem.apply(self, key=_index_key(key))

    def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        return _ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        return _ops.Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        return _ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.Reshape.apply(self, shape=shape)

    def transpose(self, *axes: Any) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops.Transpose.apply(self, axes=axes or None)

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def exp(self) -> Tensor:
        return _ops.Exp.apply(self)

    def log(self) -> Tensor:
        return _ops.Log.apply(self)

    def tanh(self) -> Tensor:
        return _ops.Tanh.apply(self)

    def relu(self) -> Tensor:
        from npllm.functional import relu  # the one ReLU, on the kernels

        return relu(self)

    def sqrt(self) -> Tensor:
        return _ops.Pow.apply(self, 0.5)


def _index_key(key: Any) -> Any:
    """Index tensors become their arrays: indices carry no gradient."""
    if isinstance(key, tuple):
        return tuple(k.data if isinstance(k, Tensor) else k for k in key)
    return key.data if isinstance(key, Tensor) else key


def _topological_order(root: Tensor) -> list[Tensor]:
    """Inputs before the tensors computed from them; iterative, so deep graphs never hit
    Python's recursion limit. Only tensors that require grad are visited."""
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._node is not None:
            for parent in node._node[2]:
                if parent is not None and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


from npllm.autograd import ops as _ops  # noqa: E402  (ops subclass Function, defined above)
