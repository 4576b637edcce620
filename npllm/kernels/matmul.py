"""The linear layer's matmuls, forward and backward (llm.c's matmul_forward/backward),
and a tiled, parallel Numba GEMM kept for study and benchmarks.

The Numba backend (the default) runs BLAS inside Numba's thread pool (`blas.gemm`: a
private single-threaded OpenBLAS per prange task), so matmuls and the fused kernels share
one pool; the reference is NumPy's `@`.

    linear_forward(x, w, b) -> out          x (N, in), w (out, in), b (out,) or None
                                            out = x @ w.T + b
    linear_backward(dout, x, w, need_dx=True, need_dw=True, need_db=True) -> (dx, dw, db)
                                            dx = dout @ w, dw = dout.T @ x, db = sum_N dout
    gemm_numba(a, b) -> a @ b               the tiled kernel itself, (M, K) @ (K, N)

The NumPy reference is NumPy's BLAS (`@` on 2-D arrays, transposes passed as flags; the
weight gradient oriented to dodge an OpenBLAS threading stall, see `_weight_grad`).
OpenBLAS runs several times faster than the hand-written tiled kernel
(docs/performance.md, "Matmul belongs in BLAS"), which `benchmarks/kernels.py`
re-measures. The tiled kernel computes A @ B as A times (B^T)-transposed, register-blocked
(see `_gemm_nt`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from npllm.kernels._jit import jit
from npllm.kernels.blas import gemm

KERNELS = ("linear_forward", "linear_backward")


# ---- NumPy reference (BLAS) ------------------------------------------------------------
def linear_forward_numpy(x, w, b):
    out = x @ w.T
    if b is not None:
        out += b
    return out


def _weight_grad(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dw = dout.T @ x, (out, in), arranged so that each GEMM's output has more rows than
    columns: once Numba's thread pool exists, OpenBLAS's 2-thread GEMM with a long K
    stalls when its output has no more rows than columns, which made it most of a training
    step (docs/performance.md, "Matmul belongs in BLAS"). The transposed product x.T @
    dout is taken when in > out, and a square one is done in two halves."""
    cout, cin = dout.shape[1], x.shape[1]
    if cout > cin:
        return dout.T @ x
    dw = np.empty((cout, cin), dtype=np.result_type(dout, x))
    step = -(-cout // 2) if cout == cin else cout
    for lo in range(0, cout, step):
        dw[lo : lo + step] = (x.T @ dout[:, lo : lo + step]).T
    return dw


def linear_backward_numpy(dout, x, w, need_dx=True, need_dw=True, need_db=True):
    # out = x @ w.T + b
    dx = dout @ w if need_dx else None
    dw = _weight_grad(dout, x) if need_dw else None
    db = dout.sum(axis=0) if need_db else None
    return dx, dw, db


# ---- Numba -----------------------------------------------------------------------------
_MB = 32  # rows of A (and C) per parallel task
_NB = 128  # rows of B^T per pass: 128 x K floats stay in L2 while all _MB rows use them


@jit(parallel=True)
def _gemm_nt(a, bt, c):
    """c = a @ bt.T for C-contiguous a (M, K), bt (N, K), c (M, N).

    Register-blocked: 4 rows of a against 2 rows of bt keep 8 running sums in registers
    while one vectorised loop walks K (from 0: a loop from k0 > 0 stayed scalar,
    docs/performance.md, "Numba habits"). Tasks of _MB rows of C run in parallel; within a
    task bt is walked in panels of _NB rows so a panel is reused from cache by all the
    task's rows."""
    m, kdim = a.shape
    n = bt.shape[0]
    z = a.dtype.type(0)
    for blk in prange((m + _MB - 1) // _MB):
        i_lo = blk * _MB
        i_hi = min(m, i_lo + _MB)
        for j_lo in range(0, n, _NB):
            j_hi = min(n, j_lo + _NB)
            for i0 in range(i_lo, i_hi, 4):
                if i0 + 4 <= i_hi:
                    a0, a1, a2, a3 = a[i0], a[i0 + 1], a[i0 + 2], a[i0 + 3]
                    j = j_lo
                    while j + 2 <= j_hi:
                        ba, bb = bt[j], bt[j + 1]
                        s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = z
                        for k in range(kdim):
                            x, y = ba[k], bb[k]
                            s0 += a0[k] * x
                            s1 += a1[k] * x
                            s2 += a2[k] * x
                            s3 += a3[k] * x
                            t0 += a0[k] * y
                            t1 += a1[k] * y
                            t2 += a2[k] * y
                            t3 += a3[k] * y
                        c[i0, j], c[i0 + 1, j], c[i0 + 2, j], c[i0 + 3, j] = s0, s1, s2, s3
                        c[i0, j + 1], c[i0 + 1, j + 1] = t0, t1
                        c[i0 + 2, j + 1], c[i0 + 3, j + 1] = t2, t3
                        j += 2
                    rows = 4
                else:
                    j = j_lo
                    rows = i_hi - i0
                for r in range(rows):  # leftover columns (and rows past the last 4)
                    ar = a[i0 + r]
                    for jj in range(j, j_hi):
                        b_ = bt[jj]
                        acc = z
                        for k in range(kdim):
                            acc += ar[k] * b_[k]
                        c[i0 + r, jj] = acc


def gemm_numba(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for 2-D arrays with the blocked Numba kernel (b is transposed to (N, K)
    first, an N x K copy, so both operands are walked along contiguous rows)."""
    dt = np.result_type(a, b)
    a = np.ascontiguousarray(a, dtype=dt)
    bt = np.ascontiguousarray(b.T, dtype=dt)
    c = np.empty((a.shape[0], bt.shape[0]), dtype=dt)
    if a.shape[1] == 0:
        c[...] = 0
    elif c.size:
        _gemm_nt(a, bt, c)
    return c


def linear_forward_numba(x, w, b):
    # out = x @ w.T + b, the bias added by each thread to its rows right after their GEMM
    return gemm(x, w, trans_b=True, bias=b)


def linear_backward_numba(dout, x, w, need_dx=True, need_dw=True, need_db=True):
    # out = x @ w.T + b
    dx = gemm(dout, w) if need_dx else None  # (N, out) @ (out, in)
    dw = gemm(dout, x, trans_a=True) if need_dw else None  # (N, out)^T @ (N, in)
    db = dout.sum(axis=0) if need_db else None
    return dx, dw, db
