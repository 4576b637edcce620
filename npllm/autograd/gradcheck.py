"""Finite-difference gradient checking: the proof every hand-written backward must pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from npllm.autograd.engine import Tensor, no_grad
from npllm.errors import GradcheckError


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int = 0,
) -> bool:
    """Compare the analytic gradient of `fn(*inputs)` with central differences, in float64,
    for every input that requires grad. The output is contracted with a fixed random
    tensor `r`, so one backward of `sum(fn(x) * r)` checks the whole Jacobian's action.
    Raises `GradcheckError` naming the worst entry; returns True when all agree."""
    xs = [
        Tensor(np.array(x.data, dtype=np.float64), requires_grad=x.requires_grad)
        if isinstance(x, Tensor) and np.issubdtype(x.dtype, np.floating)
        else x
        for x in inputs
    ]
    out = fn(*xs)
    if not isinstance(out, Tensor):
        raise GradcheckError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    r = np.random.default_rng(seed).standard_normal(out.shape)
    if out.requires_grad:
        out.backward(r)

    def objective() -> float:
        with no_grad():
            return float(np.sum(np.asarray(fn(*xs).data, dtype=np.float64) * r))

    for k, x in enumerate(xs):
        if not (isinstance(x, Tensor) and x.requires_grad):
            continue
        analytic = x.grad if x.grad is not None else np.zeros_like(x.data)
        numeric = np.zeros_like(x.data)
        flat = x.data.reshape(-1)  # a view: x.data is a fresh contiguous copy
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + eps
            plus = objective()
            flat[i] = orig - eps
            minus = objective()
            flat[i] = orig
            numeric.reshape(-1)[i] = (plus - minus) / (2 * eps)
        excess = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        excess = np.where(np.isfinite(analytic), excess, np.inf)
        if excess.size and np.max(excess) > 0:
            worst = np.unravel_index(int(np.argmax(excess)), x.shape)
            a, n = analytic[worst], numeric[worst]
            where = tuple(int(i) for i in worst)
            raise GradcheckError(
                f"gradcheck failed for input {k} (shape {x.shape}) at index {where}: "
                f"analytic {a:.8g} vs numeric {n:.8g}, |diff| {abs(a - n):.3g} > "
                f"atol + rtol*|numeric| = {atol + rtol * abs(n):.3g}"
            )
    return True
