"""What every Numba kernel shares: the `jit` decorator (cached, lazily compiled, fastmath
without nnan/ninf); the one parallel driver (`run`: a serial kernel over rows lo..hi, on
chunks of rows in parallel above one threshold, `PAR_MIN`); the one register-blocked
product (`scaled_matmul`, for the int8, decode and study GEMM kernels); `fmax`,
`prefetch`, and vectorisable float32 versions of exp and erf.

Why the approximations: this Numba build has no SVML (`numba.config.USING_SVML` is
False), so `np.exp`/`np.tanh` inside a loop are scalar library calls that stop LLVM from
vectorising the loop (docs/performance.md, "Numba habits"). `fexp` and
`ferf` are pure arithmetic on float32 (a polynomial after Cody-Waite range reduction;
Abramowitz-Stegun 7.1.26) and vectorise; on float64 they are the exact library
functions, so float64 gradchecks test the kernels' algebra, not an approximation. tanh is
built from `fexp` where needed (activations.py). Their float32 error is tested in
tests/kernels/test_jit_math.py.
"""

from __future__ import annotations

import math
import types as pytypes
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from npllm.kernels import _warm

# fastmath without "nnan"/"ninf": causal masks use -inf and inputs may hold inf/nan,
# which full fastmath would let LLVM assume away (docs/performance.md, "Numba habits").
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def jit(
    fn=None,
    *,
    parallel: bool = False,
    fastmath: bool = True,
    inline: bool = False,
    cache: bool = True,
    nogil: bool = False,
):
    """`@njit(cache=True)` with npllm's fastmath flags; compiled on first call.
    `inline=True` makes a helper that is inlined into its callers (Numba IR inlining);
    `cache=False` is for the in-kernel copies of `in_kernels`; `nogil=True` releases the
    GIL while the kernel runs (the decode step: a server's other threads go on meanwhile)."""
    opts = {
        "cache": cache,
        "nogil": nogil,
        "parallel": parallel,
        "fastmath": FASTMATH if fastmath else False,
        # Python's error model checks every float division for zero to raise
        # ZeroDivisionError; that branch kept GELU's and AdamW's loops scalar.
        # NumPy's model gives inf/nan like the NumPy references do.
        "error_model": "numpy",
    }
    if inline:
        opts["inline"] = "always"
    if fn is None:
        return lambda f: njit(**opts)(f)
    return njit(**opts)(fn)


# ---- the one parallel driver --------------------------------------------------------
# Every kernel is a serial function `kernel(*args, lo, hi)` over rows lo..hi of its arrays
# (elements, for the flat ones), and `run` calls it once over all rows, or on Numba's
# pool in chunks of rows. Below PAR_MIN units of work (an element read and written, or a
# multiply-add) it runs serially: a prange launch (a few microseconds, more when the second
# thread has gone to sleep) costs more than the work (docs/performance.md, "Dispatch
# cost"); KV-cache decoding (T = 1) calls the row kernels at a few hundred elements.
PAR_MIN = 1 << 15
MOST_CHUNKS = 8


def n_chunks(rows: int, work: int, most: int = MOST_CHUNKS) -> int:
    """How many parallel tasks `run` splits `rows` rows (of `work` units in all) into;
    0 means run serially. Eight at most, whatever the number of threads, so that partial
    sums (one per chunk) and so the results do not depend on it; GEMM asks for one per
    thread (blas.py: more was slower)."""
    if work < PAR_MIN or rows < 2:
        return 0
    return min(rows, most)


def _chunks(args, n, nchunks):
    """The driver: kernel(*args, lo, hi) on `nchunks` slices of range(n), in parallel.
    `kernel` is a global of each copy `parallel` makes, not an argument (see there)."""
    for c in prange(nchunks):
        kernel(*args, c * n // nchunks, (c + 1) * n // nchunks)  # noqa: F821


_DRIVERS: dict[Any, Any] = {}


def _copy(fn: Any, name: str, **globals_: Any) -> Any:
    """A new Python function with `fn`'s code, named `name`, some globals replaced."""
    code = fn.__code__
    out = pytypes.FunctionType(code, {**fn.__globals__, **globals_}, code.co_name)
    out.__qualname__, out.__doc__ = name, fn.__doc__  # cache files are named after it
    return out


def parallel(kernel: Any, cache: bool = True) -> Any:
    """`_chunks` for one kernel: a copy of its code whose global `kernel` is that kernel,
    jitted with parallel=True. Why not pass the kernel as an argument: Numba types a jitted
    function argument by the function object of this process, so such a call would never
    be found in the on-disk cache and would compile anew in every process (seconds of a
    cold start). A copy per kernel, named after it, is cached like any other function, and
    compiles only what it calls: a first step compiles the drivers of the kernels it uses."""
    driver = _DRIVERS.get((kernel, cache))
    if driver is None:
        name = f"_chunks.{kernel.__module__.rsplit('.', 1)[-1]}.{kernel.__name__}"
        fn = _copy(_chunks, name if cache else name + ".in_kernel", kernel=kernel)
        driver = _DRIVERS[kernel, cache] = jit(fn, parallel=True, cache=cache)
    return driver


def in_kernels(dispatcher: Any, **callees: Any) -> Any:
    """An uncached copy of a jitted function (`callees` replacing some of the functions it
    calls), for calling from inside other cached kernels when it holds a prange loop.

    Why: Numba (0.68) links a parallel function that it loaded from the on-disk cache into
    a new caller without the parallel region's code, so the caller, once cached in its
    turn, crashes (a call through a null pointer) in the next process that loads it. That
    happened to the decode step: a process decoding with int8 weights cached the step and
    the parallel product; a float32 decode in a second process compiled the float32 step
    over the cached product; a third float32 process segfaulted. An uncached copy is
    compiled from source whenever a caller compiles, so it is always linked whole
    (tests/kernels/test_cache_processes.py)."""
    py = dispatcher.py_func
    fn = _copy(py, py.__qualname__ + ".in_kernel", **callees)
    return jit(fn, parallel=dispatcher.targetoptions.get("parallel", False), cache=False)


def run(
    kernel: Any, args: tuple, rows: int, work: int | None = None, most: int = MOST_CHUNKS
) -> None:
    """kernel(*args, lo, hi) over rows 0..rows (`work` units in all, default one a row):
    serially, or in `n_chunks(rows, work, most)` chunks on Numba's pool; nothing when there
    is no work (a kernel may read x[0] of each row). While a helper process compiles the
    driver (a cold cache: `_warm`), the same chunks run one after the other here."""
    work = rows if work is None else work
    k = n_chunks(rows, work, most)
    if k:
        driver = parallel(kernel)
        if _warm.use_driver(kernel, driver, args):
            driver(args, rows, k)
        else:
            for c in range(k):
                kernel(*args, c * rows // k, (c + 1) * rows // k)
    elif rows and work:
        kernel(*args, 0, rows)


def per_chunk(
    rows: int, work: int, shape: int | tuple, dtype: Any, most: int = MOST_CHUNKS
) -> np.ndarray:
    """Zeros (chunks, *shape): one buffer (partial sums, or scratch) for each chunk that
    `run(..., rows, work, most)` makes (one when it runs serially), found by a kernel
    with `chunk_of`. Chunks never write the same memory, and partial sums are reduced in
    an order that does not depend on the number of threads."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return np.zeros((max(n_chunks(rows, work, most), 1), *shape), dtype)


@jit(inline=True)
def chunk_of(lo, n, nchunks):
    """Which of `nchunks` chunks of range(n) (as `run` cuts it: chunk c starts at
    c * n // nchunks, and nchunks <= n) starts at row lo: the row of a (nchunks, ...) array
    of partial sums that a kernel call may own (serially: 0)."""
    return (lo * nchunks + n - 1) // n


def flat(a: np.ndarray) -> np.ndarray:
    """a as a C-contiguous 1-D array (a view when it already is contiguous)."""
    return np.ascontiguousarray(a).reshape(-1)


# ---- the one register-blocked product ------------------------------------------------
@jit(inline=True)
def _block4(x, w, scale, b, out, j0):
    """Output columns j0..j0+3 for every input row. Four weight rows share each load of
    x and four independent sums keep the FMA units busy: 1.2-1.6x over one row at a time
    for batch-1 products 128-768 wide, float32 and int8, measured on this machine."""
    n, k = x.shape
    t = x.dtype.type
    w0, w1, w2, w3 = w[j0], w[j0 + 1], w[j0 + 2], w[j0 + 3]
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


@jit
def scaled_matmul(x, w, scale, b, out, lo, hi):
    """out = scale * (x @ w.T) + b, per output column j: out[:, j] = scale[j] (x . w[j]) + b[j];
    x (N, K) float, w (M, K) int8 or float (with scales of one), out (N, M). Blocks lo..hi
    of four output columns, of M // 4 + 1: the last block is the M % 4 leftover columns,
    done one at a time. Run by `run(scaled_matmul, args, M // 4 + 1, N * M * K)`; callable
    from Numba code (the decode step) serially with (0, M // 4 + 1), or through
    `parallel(scaled_matmul)`. Each output is one thread's sum in one order either way."""
    m4 = w.shape[0] // 4
    t = x.dtype.type
    for jb in range(lo, hi):
        if jb < m4:
            _block4(x, w, scale, b, out, 4 * jb)
            continue
        for j in range(4 * m4, w.shape[0]):
            wj = w[j]
            for i in range(x.shape[0]):
                acc = t(0)
                for c in range(x.shape[1]):
                    acc += x[i, c] * t(wj[c])
                out[i, j] = acc * scale[j] + b[j]


@intrinsic
def _int32_bits_as_float32(typingctx, i):
    """Reinterpret an int32's bits as a float32 (a no-op the vectoriser understands)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the calling kernel with 512-bit vectors where the CPU has
    AVX-512. On Intel's AVX-512 CPUs LLVM prefers 256-bit vectors unless told (the
    `prefer-256-bit` tuning); this tells it, for this one function, through its
    `prefer-vector-width` attribute, as clang's -mprefer-vector-width=512 does, without
    Numba's process-wide CPU settings that every other Numba user would share. No effect
    where the widest vectors are 256-bit (AVX2). Call it first in kernels whose loops are
    arithmetic-bound (GELU: 314 -> 243 us serially at cpu-small's MLP, Xeon), not in
    memory-bound ones. If llvmlite ever refuses the attribute, it is left out."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        try:  # llvmlite lists only attributes without values; the set takes any string
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except Exception:  # noqa: BLE001  (a speed hint only)
            pass
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def address_as(typingctx, address, like):
    """The integer `address` (an `ndarray.ctypes.data`) as a pointer to elements of the
    array `like`'s dtype, for `numba.carray`: how a kernel reaches arrays it was given as
    a table of addresses (adamw.py, `Spans`). The caller keeps those arrays alive."""
    if not (isinstance(address, types.Integer) and isinstance(like, types.Array)):
        return None
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def prefetch(typingctx, a, i):
    """Ask the CPU to start loading the cache line that holds element i of the array a
    (flat, C order; nothing for an array not typed C-contiguous) into every cache level,
    as LLVM's `prefetch` (read, high locality): a hint that changes no value. For streams
    too short for the hardware prefetcher to catch in time: the decode step's attention
    reads each head's keys and values, a few KB each, from the KV cache
    (kernels/decode.py, `_attend`)."""
    if not (isinstance(a, types.Array) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        if signature.args[0].layout != "C":  # no flat index to go by: no hint
            return context.get_dummy_value()
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        )
        at = builder.bitcast(builder.gep(arr.data, [args[1]]), i8p)
        builder.call(fn, [at, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.void(a, i), codegen


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _exp_f32(x):
    # exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2/2; Cody-Waite split of ln2
    # and the cephes expf polynomial (max rel. error ~2e-7 on [-87, 88]).
    xc = min(max(x, np.float32(-87.3)), np.float32(88.3))
    n = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))
    r = xc - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    scale = _int32_bits_as_float32((np.int32(n) + np.int32(127)) << np.int32(23))
    # below -87.3 the true value is under float32's normal range: flush to 0, so that
    # exp(-inf) is exactly 0 as masks need
    return y * scale if x > np.float32(-87.3) else np.float32(0.0)


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _erf_f32(x):
    # Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7, made odd by symmetry.
    a = abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.3275911) * a)
    p = np.float32(1.061405429) * t + np.float32(-1.453152027)
    p = p * t + np.float32(1.421413741)
    p = p * t + np.float32(-0.284496736)
    p = p * t + np.float32(0.254829592)
    y = np.float32(1.0) - p * t * _exp_f32(-a * a)
    return y if x >= np.float32(0.0) else -y


@intrinsic
def fmax(typingctx, a, b):
    """max(a, b) as LLVM's `maxnum`, for running maxima: `max` lowers to a compare and a
    select that LLVM may not reorder without the no-NaN flag (which the causal masks'
    -inf rules out), so a loop `mx = max(mx, x[j])` stayed scalar, one dependent compare
    per element; `maxnum` reductions vectorise (docs/performance.md, "Numba habits").
    A NaN operand is ignored, as C's fmax does; -inf works as usual."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        fn = builder.module.declare_intrinsic("llvm.maxnum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)

    return a(a, b), codegen


def fexp(x):
    """exp: vectorisable approximation on float32, `math.exp` on float64."""
    return math.exp(x)


def ferf(x):
    """erf: vectorisable approximation on float32, `math.erf` on float64."""
    return math.erf(x)


def _by_width(f32_impl, f64_impl):
    def typer(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return lambda x: f32_impl(x)
        if isinstance(x, types.Float):
            return lambda x: f64_impl(x)
        return None

    return typer


@njit(inline="always")
def _exp_f64(x):
    return math.exp(x)


@njit(inline="always")
def _erf_f64(x):
    return math.erf(x)


overload(fexp, inline="always")(_by_width(_exp_f32, _exp_f64))
overload(ferf, inline="always")(_by_width(_erf_f32, _erf_f64))


@jit
def _exp_map(x, out):
    for i in range(x.size):
        out[i] = fexp(x[i])


@jit
def _erf_map(x, out):
    for i in range(x.size):
        out[i] = ferf(x[i])


def apply_math(name: str, x: np.ndarray) -> np.ndarray:
    """`fexp` or `ferf` over an array, so tests can measure their error."""
    x = flat(x)
    out = np.empty_like(x)
    {"exp": _exp_map, "erf": _erf_map}[name](x, out)
    return out
