"""The linear layer's matmuls, forward and backward (llm.c's matmul_forward/backward),
and a tiled, parallel Numba GEMM kept for study and benchmarks.

    linear_forward(x, w, b) -> out          x (N, in), w (out, in), b (out,) or None
                                            out = x @ w.T + b
    linear_backward(dout, x, w, need_dx=True, need_dw=True, need_db=True) -> (dx, dw, db)
                                            dx = dout @ w, dw = dout.T @ x, db = sum_N dout
    gemm_numba(a, b) -> a @ b               the tiled kernel itself, (M, K) @ (K, N)

The NumPy reference is BLAS (`@` on 2-D arrays: one GEMM per product, transposes passed
as flags, no copies) and is the default: PERF_NOTES measured OpenBLAS at 4-8x a
hand-written Numba matmul, and `benchmarks/kernels.py` re-measures the ratio here. The
Numba kernel is an i-k-j loop blocked over 4 rows of A and 256 of K, so each loaded row of
B feeds 4 FMAs and stays in L1/L2; rows of C are split across threads with prange.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from npllm.kernels._jit import jit

KERNELS = ("linear_forward", "linear_backward")


# ---- NumPy reference (BLAS) ------------------------------------------------------------
def linear_forward_numpy(x, w, b):
    out = x @ w.T
    if b is not None:
        out += b
    return out


def linear_backward_numpy(dout, x, w, need_dx=True, need_dw=True, need_db=True):
    # out = x @ w.T + b
    dx = dout @ w if need_dx else None
    dw = dout.T @ x if need_dw else None
    db = dout.sum(axis=0) if need_db else None
    return dx, dw, db


# ---- Numba -----------------------------------------------------------------------------
_MB = 16  # rows of C per parallel task
_KB = 256  # depth of one K block: 4 rows of A and 256 rows of B stay in cache


@jit(parallel=True)
def _gemm(a, b, c):
    m, kdim = a.shape
    n = b.shape[1]
    nblocks = (m + _MB - 1) // _MB
    for blk in prange(nblocks):
        i0 = blk * _MB
        i1 = min(m, i0 + _MB)
        for k0 in range(0, kdim, _KB):
            k1 = min(kdim, k0 + _KB)
            i = i0
            while i + 4 <= i1:
                c0, c1, c2, c3 = c[i], c[i + 1], c[i + 2], c[i + 3]
                for k in range(k0, k1):
                    a0, a1, a2, a3 = a[i, k], a[i + 1, k], a[i + 2, k], a[i + 3, k]
                    br = b[k]
                    # the inner loop runs from 0 over whole rows: that is what LLVM
                    # vectorises (a loop starting at j0 > 0 stayed scalar, PERF_NOTES)
                    for j in range(n):
                        bj = br[j]
                        c0[j] += a0 * bj
                        c1[j] += a1 * bj
                        c2[j] += a2 * bj
                        c3[j] += a3 * bj
                i += 4
            while i < i1:
                ci = c[i]
                for k in range(k0, k1):
                    ak = a[i, k]
                    br = b[k]
                    for j in range(n):
                        ci[j] += ak * br[j]
                i += 1


def gemm_numba(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for 2-D arrays with the tiled Numba kernel."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    c = np.zeros((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    if c.size and a.shape[1]:
        _gemm(a, b, c)
    return c


def linear_forward_numba(x, w, b):
    out = gemm_numba(x, w.T)
    if b is not None:
        out += b
    return out


def linear_backward_numba(dout, x, w, need_dx=True, need_dw=True, need_db=True):
    # out = x @ w.T + b
    dx = gemm_numba(dout, w) if need_dx else None
    dw = gemm_numba(dout.T, x) if need_dw else None
    db = dout.sum(axis=0) if need_db else None
    return dx, dw, db
