"""Int8 weight-only linear layer: y = x @ dequant(Wq).T + b, dequantizing on the fly.

    int8_linear(x, wq, scale, b) -> y
        x (N, K) float32, wq (M, K) int8, scale (M,) float32, b (M,) float32 or None
        y[n, m] = scale[m] * sum_k x[n, k] * wq[m, k] + b[m]

The scale is per output channel (one per row of wq, see npllm/quant.py), so it factors out
of the dot product: the kernel accumulates x . wq[m] in float32 and multiplies once. The
weights are never expanded to float32 in memory: at batch 1 a linear layer is a
matrix-vector product bound by reading the weights, and int8 reads 4x fewer bytes.

`int8_linear_numpy` is the reference (it does build the float32 matrix); `int8_linear_numba`
loops over output rows four at a time (in parallel when the product is big enough to pay
for a prange launch) and, inside, over the N inputs, so each weight row is loaded once.
`int8_linear` picks the Numba version unless `npllm.kernels.use("numpy")` is active.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from npllm.errors import ShapeError
from npllm.kernels._jit import FASTMATH, jit

# `int8_linear_numba` runs in parallel from this many weights x input rows (N * M * K): below
# it a prange launch and the wake-up of the second thread cost more than the work
# (docs/performance.md, "Dispatch cost"). It serves prompts (prefill) of int8 models; decode steps
# choose serial or parallel for themselves (npllm/kernels/decode.py).
_PAR_MIN = 1 << 16


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
@njit(inline="always", fastmath=FASTMATH)
def _block(x, wq, scale, b, out, j0):
    """Output columns j0..j0+3 for every input row. Four weight rows share each load of
    x and four independent sums keep the FMA units busy (docs/performance.md, "Dispatch
    cost")."""
    n, k = x.shape
    t = x.dtype.type
    w0, w1, w2, w3 = wq[j0], wq[j0 + 1], wq[j0 + 2], wq[j0 + 3]
    for i in range(n):
        xi = x[i]
        a0 = t(0)
        a1 = t(0)
        a2 = t(0)
        a3 = t(0)
        for c in range(k):  # from 0 over whole rows: vectorises
            xc = xi[c]
            a0 += xc * t(w0[c])
            a1 += xc * t(w1[c])
            a2 += xc * t(w2[c])
            a3 += xc * t(w3[c])
        out[i, j0] = a0 * scale[j0] + b[j0]
        out[i, j0 + 1] = a1 * scale[j0 + 1] + b[j0 + 1]
        out[i, j0 + 2] = a2 * scale[j0 + 2] + b[j0 + 2]
        out[i, j0 + 3] = a3 * scale[j0 + 3] + b[j0 + 3]


@njit(inline="always", fastmath=FASTMATH)
def _tail(x, wq, scale, b, out, j0):
    """The last m % 4 output columns, one row at a time."""
    n, k = x.shape
    t = x.dtype.type
    for j in range(j0, wq.shape[0]):
        w = wq[j]
        for i in range(n):
            acc = t(0)
            for c in range(k):
                acc += x[i, c] * t(w[c])
            out[i, j] = acc * scale[j] + b[j]


# out = scale * (x @ wq.T) + b into a preallocated out (N, M), callable from other Numba
# code. Both also take float32 weights (with scales of one): npllm/kernels/decode.py runs
# every matrix-vector product of a decode step through them. Two kernels rather than one with a
# flag: a prange loop always launches the thread pool.
@jit
def scaled_matmul(x, wq, scale, b, out):
    m4 = wq.shape[0] // 4
    for jb in range(m4):
        _block(x, wq, scale, b, out, 4 * jb)
    _tail(x, wq, scale, b, out, 4 * m4)


@jit(parallel=True)
def scaled_matmul_parallel(x, wq, scale, b, out):
    m4 = wq.shape[0] // 4
    for jb in prange(m4):
        _block(x, wq, scale, b, out, 4 * jb)
    _tail(x, wq, scale, b, out, 4 * m4)


def int8_linear_numba(x, wq, scale, b=None):
    _check(x, wq, scale, b)
    x = np.ascontiguousarray(x)
    wq = np.ascontiguousarray(wq)
    dt = x.dtype
    scale_ = np.ascontiguousarray(scale, dtype=dt)
    b_ = np.zeros(wq.shape[0], dt) if b is None else np.ascontiguousarray(b, dtype=dt)
    out = np.empty((x.shape[0], wq.shape[0]), dt)
    if out.size:
        kernel = scaled_matmul_parallel if wq.size * x.shape[0] >= _PAR_MIN else scaled_matmul
        kernel(x, wq, scale_, b_, out)
    return out


def int8_linear(x, wq, scale, b=None):
    """Dispatch on the kernel backend: NumPy reference under `kernels.use("numpy")`,
    otherwise the Numba kernel."""
    from npllm import kernels

    if kernels.backend() == "numpy":
        return int8_linear_numpy(x, wq, scale, b)
    return int8_linear_numba(x, wq, scale, b)
