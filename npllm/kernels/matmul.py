"""The linear layer's matmuls, forward and backward (llm.c's matmul_forward/backward),
and a plain Numba GEMM kept for study.

The Numba backend (the default) runs BLAS inside Numba's thread pool (`blas.gemm`: a
private single-threaded OpenBLAS per chunk of rows), so matmuls and the fused kernels
share one pool; the reference is NumPy's `@`.

    linear_forward(x, w, b) -> out          x (N, in), w (out, in), b (out,) or None
                                            out = x @ w.T + b
    linear_backward(dout, x, w, need_dx=True, need_dw=True, need_db=True, dw_out=None)
        -> (dx, dw, db)
        out = x @ w.T + b  =>  dx = dout @ w, dw = dout^T @ x, db = sum_N dout
        (out_nj = sum_i x_ni w_ji + b_j: d/dx_ni picks w_ji, d/dw_ji picks x_ni);
        dw is written into `dw_out` (and is it) when that is given, a C-contiguous
        (out, in) array of the result's dtype: an optimizer's flat gradient buffer
    gemm_numba(a, b) -> a @ b               Numba's register-blocked loop, (M, K) @ (K, N)

The NumPy reference is NumPy's BLAS (`@` on 2-D arrays, transposes passed as flags; the
weight gradient oriented to dodge an OpenBLAS threading stall, see `_weight_grad`).
OpenBLAS runs several times faster than a hand-written Numba GEMM (docs/performance.md,
"Matmul belongs in BLAS"). `gemm_numba` is that hand-written loop: `_jit.scaled_matmul`,
the int8 and decode kernels' product, four output columns at a time.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads

from npllm.kernels._jit import run, scaled_matmul
from npllm.kernels.blas import gemm, linear_grads

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


def _into(out: np.ndarray | None, shape: tuple, dtype: np.dtype) -> np.ndarray | None:
    """`out` if it can take a C-contiguous result of that shape and dtype, else None."""
    fits = (
        out is not None
        and out.shape == shape
        and out.dtype == dtype
        and out.flags.c_contiguous
        and out.flags.writeable
    )
    return out if fits else None


def linear_backward_numpy(dout, x, w, need_dx=True, need_dw=True, need_db=True, dw_out=None):
    # out = x @ w.T + b  =>  dx = dout @ w, dw = dout^T @ x, db = sum_rows(dout)
    dx = dout @ w if need_dx else None
    dw = _weight_grad(dout, x) if need_dw else None
    if dw is not None and _into(dw_out, dw.shape, dw.dtype) is not None:
        dw_out[...] = dw
        dw = dw_out
    db = dout.sum(axis=0) if need_db else None
    return dx, dw, db


# ---- Numba -----------------------------------------------------------------------------
def gemm_numba(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for 2-D arrays with Numba's register-blocked loop (`_jit.scaled_matmul`, with
    scales of one and no bias): b is transposed to (N, K) first, an N x K copy, so both
    operands are walked along contiguous rows."""
    dt = np.result_type(a, b)
    a = np.ascontiguousarray(a, dtype=dt)
    bt = np.ascontiguousarray(b.T, dtype=dt)
    m, n = a.shape[0], bt.shape[0]
    c = np.empty((m, n), dtype=dt)
    ones, zeros = np.ones(n, dt), np.zeros(n, dt)
    run(scaled_matmul, (a, bt, ones, zeros, c), n // 4 + 1, m * n * max(a.shape[1], 1))
    return c


def linear_forward_numba(x, w, b):
    # out = x @ w.T + b, the bias added by each thread to its rows right after their GEMM
    return gemm(x, w, trans_b=True, bias=b)


def linear_backward_numba(dout, x, w, need_dx=True, need_dw=True, need_db=True, dw_out=None):
    # out = x @ w.T + b  =>  dx = dout @ w, dw = dout^T @ x, db = sum_rows(dout)
    dw_out = _into(dw_out, (dout.shape[1], x.shape[1]), np.result_type(dout, x, w))
    if need_dx and need_dw and get_num_threads() == 2 and dout.size and x.shape[1]:
        return linear_grads(dout, x, w, need_db, dw_out)  # the two GEMMs side by side
    dx = gemm(dout, w) if need_dx else None  # (N, out) @ (out, in)
    dw = gemm(dout, x, trans_a=True, out=dw_out) if need_dw else None  # (N, out)^T @ (N, in)
    db = dout.sum(axis=0) if need_db else None
    return dx, dw, db
