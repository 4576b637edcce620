"""Int8 weight-only linear layer: y = x @ dequant(Wq).T + b, dequantizing on the fly.

    int8_linear(x, wq, scale, b) -> y
        x (N, K) float32, wq (M, K) int8, scale (M,) float32, b (M,) float32 or None
        y[n, m] = scale[m] * sum_k x[n, k] * wq[m, k] + b[m]

The scale is per output channel (one per row of wq, see npllm/quant.py), so it factors out
of the dot product: the kernel accumulates x . wq[m] in float32 and multiplies once. The
weights are never expanded to float32 in memory: at batch 1 a linear layer is a
matrix-vector product bound by reading the weights, and int8 reads 4x fewer bytes.

`int8_linear_numpy` is the reference (it does build the float32 matrix); `int8_linear_numba`
runs `_jit.scaled_matmul`: output rows four at a time (in parallel above `_jit.PAR_MIN`
multiply-adds) and, inside, the N inputs, so each weight row is loaded once.
`kernels.int8_linear` is the one the backend switch makes active.
"""

from __future__ import annotations

import numpy as np

from npllm.errors import ShapeError
from npllm.kernels._jit import run, scaled_matmul

KERNELS = ("int8_linear",)


def _check(x: np.ndarray, wq: np.ndarray, scale: np.ndarray, b: np.ndarray | None) -> None:
    if x.ndim != 2 or wq.ndim != 2 or x.shape[1] != wq.shape[1]:
        raise ShapeError(
            f"int8_linear needs x (N, K) and wq (M, K), got x {x.shape} and wq {wq.shape}"
        )
    if wq.dtype != np.int8:
        raise ShapeError(f"int8_linear needs int8 weights, got {wq.dtype}; quantize them first")
    if scale.shape != (wq.shape[0],) or (b is not None and b.shape != (wq.shape[0],)):
        raise ShapeError(
            f"int8_linear needs scale and bias of shape ({wq.shape[0]},), got "
            f"{scale.shape} and {None if b is None else b.shape}"
        )


# ---- NumPy reference -------------------------------------------------------------------
def int8_linear_numpy(x, wq, scale, b=None):
    _check(x, wq, scale, b)
    w = wq.astype(x.dtype) * scale.astype(x.dtype)[:, None]  # (M, K), the float weights
    y = x @ w.T
    if b is not None:
        y += b
    return y


# ---- Numba -----------------------------------------------------------------------------
# The kernel is `_jit.scaled_matmul`, the register-blocked product that decode.py and
# matmul.gemm_numba share: it takes int8 weights with their scales as they are.
def int8_linear_numba(x, wq, scale, b=None):
    _check(x, wq, scale, b)
    x = np.ascontiguousarray(x)
    wq = np.ascontiguousarray(wq)
    dt = x.dtype
    scale_ = np.ascontiguousarray(scale, dtype=dt)
    b_ = np.zeros(wq.shape[0], dt) if b is None else np.ascontiguousarray(b, dtype=dt)
    out = np.empty((x.shape[0], wq.shape[0]), dt)
    work = out.size * max(x.shape[1], 1)  # multiply-adds (K = 0 still writes the bias)
    run(scaled_matmul, (x, wq, scale_, b_, out), wq.shape[0] // 4 + 1, work)
    return out
