"""What every Numba kernel shares: the `jit` decorator (cached, lazily compiled, fastmath
without nnan/ninf) and vectorisable float32 versions of exp and erf.

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

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# fastmath without "nnan"/"ninf": causal masks use -inf and inputs may hold inf/nan,
# which full fastmath would let LLVM assume away (docs/performance.md, "Numba habits").
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def jit(fn=None, *, parallel: bool = False, fastmath: bool = True, inline: bool = False):
    """`@njit(cache=True)` with npllm's fastmath flags; compiled on first call.
    `inline=True` makes a helper that is inlined into its callers (Numba IR inlining)."""
    opts = {
        "cache": True,
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


# Below this many elements of work a kernel runs serially: a prange launch (a few
# microseconds, more when the second thread has gone to sleep) costs more than the work;
# KV-cache decoding (T = 1) calls the row kernels at a few hundred elements.
PAR_MIN = 1 << 15


def n_chunks(rows: int, work: int) -> int:
    """How many parallel tasks to split `rows` rows (of `work` elements in all) into;
    0 means run serially."""
    if work < PAR_MIN or rows < 2:
        return 0
    return min(rows, 8)


@intrinsic
def _int32_bits_as_float32(typingctx, i):
    """Reinterpret an int32's bits as a float32 (a no-op the vectoriser understands)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


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


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _map(fn_id, x, out):
    """Apply one of the approximations elementwise (for tests of their error)."""
    for i in range(x.size):
        out[i] = fexp(x[i]) if fn_id == 0 else ferf(x[i])


def apply_math(name: str, x: np.ndarray) -> np.ndarray:
    """`fexp` or `ferf` over an array, so tests can measure their error."""
    x = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(x)
    _map({"exp": 0, "erf": 1}[name], x, out)
    return out
