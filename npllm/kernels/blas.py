"""GEMM on one thread pool: a private, single-threaded OpenBLAS called from inside Numba's
parallel loops.

    gemm(a, b, trans_a=False, trans_b=False, out=None, beta=0.0) -> out
        out = op(a) @ op(b) + beta * out, op(x) = x.T when trans_x; 2-D, float32 or float64

Why not NumPy's `@`: NumPy's OpenBLAS runs its own pthread pool, and Numba runs an OpenMP
pool. On a 2-core machine the idle workers of one pool spin while the other pool needs the
cores, so every switch between a matmul and a fused kernel was slowed severalfold
(docs/performance.md, "Two thread pools"). The old cure, `OMP_WAIT_POLICY=passive` in the
environment, only worked when npllm was imported before torch or numba, made every Numba
launch wake a sleeping thread, and slowed PyTorch too when it shared the process.

So npllm owns its BLAS: the `scipy-openblas32` wheel (the OpenBLAS build NumPy and SciPy
are made with) is loaded here as a private copy, with its own thread count set to one,
and nothing else in the process uses it. `gemm` splits the rows of the output into
chunks and runs one single-threaded `cblas_?gemm` per chunk (`_jit.run`), so matmuls and
fused kernels share Numba's pool and there is never a second pool to fight with. NumPy's
own BLAS, and every other library, keep their settings untouched.

The BLAS entry points reach Numba as external symbols (`llvmlite.binding.add_symbol`), so
the compiled kernels refer to them by name and stay cacheable on disk.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os

import numpy as np
from llvmlite import binding as llvm
from numba import get_num_threads, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from npllm.kernels._jit import jit, run

_ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _load_private_openblas() -> ctypes.CDLL:
    spec = importlib.util.find_spec("scipy_openblas32")
    libs = glob.glob(os.path.join(spec.submodule_search_locations[0], "lib", "*openblas*.so*"))
    libs += glob.glob(os.path.join(spec.submodule_search_locations[0], "lib", "*openblas*.dylib"))
    # OpenBLAS reads OPENBLAS_NUM_THREADS once, when it is loaded: set it to one for this
    # load only, so that this copy never starts worker threads, then restore it for others.
    before = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        lib = ctypes.CDLL(sorted(libs)[0])
    finally:
        if before is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = before
    lib.scipy_openblas_set_num_threads(1)
    return lib


_LIB = _load_private_openblas()
_LIB.scipy_openblas_get_config.restype = ctypes.c_char_p


def config() -> str:
    """The private OpenBLAS's build string, e.g. 'OpenBLAS 0.3.34 DYNAMIC_ARCH ... SkylakeX'."""
    return _LIB.scipy_openblas_get_config().decode()


for _c in "sd":
    _fn = getattr(_LIB, f"scipy_cblas_{_c}gemm")
    llvm.add_symbol(f"npllm_cblas_{_c}gemm", ctypes.cast(_fn, ctypes.c_void_p).value)


def _cblas_gemm_type(real):
    i = types.int32
    p = types.voidptr
    return types.void(i, i, i, i, i, i, real, p, i, p, i, real, p, i)


_sgemm = types.ExternalFunction("npllm_cblas_sgemm", _cblas_gemm_type(types.float32))
_dgemm = types.ExternalFunction("npllm_cblas_dgemm", _cblas_gemm_type(types.float64))


@intrinsic
def _ptr(typingctx, arr, offset):
    """`&arr.flat[offset]` as a void pointer (arr C-contiguous)."""
    sig = types.voidptr(arr, types.intp)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.bitcast(builder.gep(ary.data, [args[1]]), cgutils.voidptr_t)

    return sig, codegen


def gemm_block(ta, tb, m, n, k, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
    """Inside a Numba kernel: one single-threaded cblas_?gemm, C = alpha op(A) op(B) + beta C,
    on the row-major blocks that start at flat offsets `a_off`, `b_off`, `c_off` of the
    C-contiguous arrays a, b, c; ta/tb are TRANS or NO_TRANS. For kernels that run many
    small products in their own parallel tasks (attention: two or four per head)."""
    raise NotImplementedError("gemm_block is callable from Numba kernels only")


@overload(gemm_block, inline="always")
def _gemm_block_impl(ta, tb, m, n, k, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
    real = c.dtype
    fn = _sgemm if real == types.float32 else _dgemm if real == types.float64 else None
    if fn is None:
        return None

    def impl(ta, tb, m, n, k, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
        i = np.int32
        fn(
            i(_ROW_MAJOR), i(ta), i(tb), i(m), i(n), i(k), real(alpha),
            _ptr(a, a_off), i(lda), _ptr(b, b_off), i(ldb), real(beta), _ptr(c, c_off), i(ldc),
        )  # fmt: skip

    return impl


@jit
def _gemm_rows(trans_a, trans_b, a, b, c, beta, bias, lo, hi):
    """Rows lo..hi of c = op(a) @ op(b) + beta * c (+ bias on every row, unless bias is
    empty): one single-threaded BLAS call on that block of rows, then the bias added to it
    while it is still in cache. `gemm` runs it by `_jit.run`, one chunk per thread."""
    n = c.shape[1]
    k = a.shape[0] if trans_a else a.shape[1]
    lda, ldb = a.shape[1], b.shape[1]
    ta = TRANS if trans_a else NO_TRANS
    tb = TRANS if trans_b else NO_TRANS
    if hi > lo:
        # rows lo.. of op(a): rows of a, or columns of a when it is transposed
        a_off = lo if trans_a else lo * lda
        gemm_block(ta, tb, hi - lo, n, k, 1.0, a, a_off, lda, b, 0, ldb, beta, c, lo * n, n)
        if bias.size:
            for i in range(lo, hi):
                for j in range(n):
                    c[i, j] += bias[j]


_COLS = 64


@jit
def _gemm_col_blocks(trans_a, trans_b, a, b, c, beta, bias, lo, hi):
    """Columns lo..hi of c, as `_gemm_rows` does rows: for products of few rows (a prompt
    of a few tokens), where each thread would otherwise read all of b (the weights). (The
    decode step has its own blocks, `decode._gemm_cols`: fixed in rows and depth too, so
    that a row's bits do not depend on its batch.)"""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    lda, ldb = a.shape[1], b.shape[1]
    ta = TRANS if trans_a else NO_TRANS
    tb = TRANS if trans_b else NO_TRANS
    for j0 in range(lo, hi, _COLS):  # blocks of b that stay in cache while used
        j1 = min(hi, j0 + _COLS)
        # columns j0.. of op(b): rows of b when it is transposed, else its columns
        b_off = j0 * ldb if trans_b else j0
        gemm_block(ta, tb, m, j1 - j0, k, 1.0, a, 0, lda, b, b_off, ldb, beta, c, j0, n)
        if bias.size:
            for i in range(m):
                for j in range(j0, j1):
                    c[i, j] += bias[j]


# Below this many rows a product (of at least 4 blocks of columns) is split among the
# threads by columns, each reading its part of b, in blocks of _COLS that stay in cache,
# instead of by rows, each reading all of b: guppy's prompt pass (the decoder's first
# forward) at 17 tokens 8.7 -> 3.2-5 ms, at 64 tokens 13 -> 10-11 ms (Xeon, 2 threads).
FEW_ROWS = 128


def gemm(
    a: np.ndarray,
    b: np.ndarray,
    trans_a: bool = False,
    trans_b: bool = False,
    out: np.ndarray | None = None,
    beta: float = 0.0,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """op(a) @ op(b) (+ beta * out) (+ bias, broadcast over rows), 2-D float32/float64, on
    Numba's pool (see module doc). Other dtypes go to NumPy."""
    m = a.shape[1] if trans_a else a.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    n = b.shape[0] if trans_b else b.shape[1]
    dt = np.result_type(a, b)
    if out is None:
        out = np.empty((m, n), dtype=dt)
        beta = 0.0
    if m == 0 or n == 0:
        return out
    blas_ok = dt in (np.float32, np.float64) and out.dtype == dt and out.flags.c_contiguous
    if k == 0 or not blas_ok:
        # NumPy's matmul (an empty sum, k = 0, is zeros: never 0 * out, which may hold NaN)
        res = (a.T if trans_a else a) @ (b.T if trans_b else b)
        out[...] = res + beta * out if beta else res
        if bias is not None:
            out += bias
        return out
    a = np.ascontiguousarray(a, dtype=dt)
    b = np.ascontiguousarray(b, dtype=dt)
    bias = np.ascontiguousarray(bias, dtype=dt) if bias is not None else np.empty(0, dt)
    # one chunk of rows per thread: two per thread was slower (the weight gradient at
    # 128 x 128 x 768: 168 against 211 GFLOP/s)
    args = (trans_a, trans_b, a, b, out, beta, bias)
    if m < FEW_ROWS and n >= 4 * _COLS:
        run(_gemm_col_blocks, args, n, m * n * k, get_num_threads())
    else:
        run(_gemm_rows, args, m, m * n * k, get_num_threads())
    return out


@jit
def _linear_grad_tasks(dout, x, w, dx, dw, db, lo, hi):
    """Tasks lo..hi of a linear layer's backward: task 0 is dx = dout @ w and db = dout
    summed over rows (float64 sums; empty db: none), task 1 is dw = dout^T @ x, each one
    single-threaded BLAS call. `linear_grads` runs the two on the two threads at once. db
    goes with dx, the shorter product here (it reads dout while the product left it in
    cache), so the two threads finish closer together: cpu-small's linear backwards 2-7%
    faster than with dw (MLP 820 -> 800 us, lm_head 129 -> 120; Xeon)."""
    n, o = dout.shape
    i = x.shape[1]
    for task in range(lo, hi):
        if task == 1:
            gemm_block(TRANS, NO_TRANS, o, i, n, 1.0, dout, 0, o, x, 0, i, 0.0, dw, 0, i)
        else:
            gemm_block(NO_TRANS, NO_TRANS, n, i, o, 1.0, dout, 0, o, w, 0, i, 0.0, dx, 0, i)
            if db.size:
                acc = np.zeros(o, np.float64)
                for r in range(n):
                    for j in range(o):
                        acc[j] += dout[r, j]
                for j in range(o):
                    db[j] = acc[j]


def linear_grads(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, need_db: bool, dw: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(dx, dw, db) of out = x @ w.T + b for dout (N, out), x (N, in), w (out, in), float32 or
    float64, with the two products side by side on a two-thread pool: each a whole GEMM on
    one thread, instead of each GEMM split in two row halves one after the other (whole
    products keep BLAS's blocking: 4-14% faster at cpu-small's and guppy's shapes, Xeon).
    Callers use it when the pool has two threads (`gemm` splits otherwise). `dw`, if
    given, receives the weight gradient (C-contiguous, (out, in), of the result dtype)."""
    dt = np.result_type(dout, x, w)
    dout, x, w = (np.ascontiguousarray(a, dtype=dt) for a in (dout, x, w))
    n, o = dout.shape
    dx = np.empty((n, x.shape[1]), dt)
    dw = np.empty((o, x.shape[1]), dt) if dw is None else dw
    db = np.empty(o if need_db else 0, dt)
    run(_linear_grad_tasks, (dout, x, w, dx, dw, db), 2, 2 * dout.size * x.shape[1], 2)
    return dx, dw, (db if need_db else None)


@jit
def _batched_rows(a, b, c, lo, hi):
    """c[i] = a[i] @ b[i] for batch items lo..hi of C-contiguous a (n, m, k), b (n, k, p),
    c (n, m, p): one single-threaded BLAS call each."""
    n, m, k = a.shape
    p = b.shape[2]
    for i in range(lo, hi):
        gemm_block(
            NO_TRANS, NO_TRANS, m, p, k, 1.0, a, i * m * k, k, b, i * k * p, p, 0.0, c, i * m * p, p
        )


def batched_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (..., m, k) @ b (..., k, p) for equal batch dimensions, float32 or float64, on
    Numba's pool: chunks of batch items in parallel, one BLAS call per item (NumPy's `@`
    would wake OpenBLAS's own pool: docs/performance.md, "Two thread pools")."""
    dt = np.result_type(a, b)
    lead, (m, k), p = a.shape[:-2], a.shape[-2:], b.shape[-1]
    n = int(np.prod(lead))
    a3 = np.ascontiguousarray(a, dtype=dt).reshape(n, m, k)
    b3 = np.ascontiguousarray(b, dtype=dt).reshape(n, k, p)
    c = np.empty((n, m, p), dt)
    if c.size and k:
        run(_batched_rows, (a3, b3, c), n, c.size * k)
    else:
        c[...] = 0
    return c.reshape(*lead, m, p)
