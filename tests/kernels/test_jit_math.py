"""The float32 approximations inside the Numba kernels, measured against float64 truth
over their whole useful range, plus the special values kernels rely on."""

from __future__ import annotations

import math

import numpy as np

from npllm.kernels._jit import apply_math


def test_fexp_relative_error_over_the_float32_range():
    x = np.linspace(-87.0, 88.0, 1_000_001, dtype=np.float32)
    truth = np.exp(x.astype(np.float64))
    err = np.abs(apply_math("exp", x) - truth) / truth
    assert err.max() < 5e-7  # np.exp on float32 itself reaches ~2e-7


def test_fexp_special_values():
    out = apply_math("exp", np.array([-np.inf, -1e4, -100.0, 0.0], dtype=np.float32))
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, 1.0])  # masks need exp(-inf) == 0
    assert apply_math("exp", np.array([1e4], dtype=np.float32))[0] > 1e38  # saturates, finite


def test_ferf_absolute_error():
    x = np.linspace(-6.0, 6.0, 20_001, dtype=np.float32)
    truth = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.abs(apply_math("erf", x) - truth).max() < 1e-6
    assert apply_math("erf", np.array([0.0], dtype=np.float32))[0] == 0.0


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place between two float64 arrays."""
    return np.abs(a - b) / np.spacing(np.maximum(np.abs(a), np.abs(b)))


def test_float64_is_the_library_function_within_a_few_ulp():
    # On float64 the kernels call libm's exp/erf. NumPy's own float64 exp is a SIMD
    # routine on AVX-512 machines that differs from libm by up to an ulp, so the check
    # is "within a few ulp", not bit for bit: it must pass on any x86-64 CPU, and it still
    # fails on any float32 approximation (millions of ulp away in float64).
    x = np.linspace(-30.0, 30.0, 1001)
    assert _ulps(apply_math("exp", x), np.exp(x)).max() <= 4
    assert _ulps(apply_math("erf", x), np.array([math.erf(v) for v in x])).max() <= 4
    assert apply_math("exp", np.array([0.0]))[0] == 1.0


def test_prefetch_is_a_hint_that_changes_nothing():
    """`prefetch` emits the CPU's prefetch instruction for a C-contiguous array (and
    nothing for a strided one), reads and writes no value, and accepts indexes past the
    end (a hint never faults)."""
    from numba import njit

    from npllm.kernels._jit import prefetch

    @njit
    def total(a, ahead):
        s = a.dtype.type(0)
        for i in range(a.size):
            prefetch(a, i + ahead)
            s += a[i]
        return s

    a = np.arange(1000, dtype=np.float32)
    before = a.copy()
    assert total(a, 16) == total(a, 0) == a.sum()
    assert total(a, 10_000) == a.sum()
    assert np.array_equal(a, before)
    asm = total.inspect_asm(total.signatures[0])
    assert "\tprefetcht0" in asm  # locality 3: into every level
    strided = a[::2]
    assert total(strided, 16) == strided.sum()
    assert "\tprefetcht0" not in total.inspect_asm(total.signatures[-1])


def test_wide_vectors_asks_llvm_for_512_bit_vectors_in_that_function_only():
    """`wide_vectors` puts `prefer-vector-width`="512" on the calling function (so on any
    CPU its IR carries it) and changes no value; on a CPU with AVX-512 the loop then uses
    zmm registers, the same loop without it does not (LLVM's 256-bit preference)."""
    import llvmlite.binding as ll
    from numba import njit

    from npllm.kernels._jit import FASTMATH, wide_vectors

    def body(x, out):
        for i in range(x.size):
            out[i] = x[i] * x[i] + np.float32(1)

    @njit(fastmath=FASTMATH)
    def wide(x, out):
        wide_vectors()
        body_(x, out)

    body_ = njit(fastmath=FASTMATH, inline="always")(body)
    narrow = njit(fastmath=FASTMATH)(body)
    x = np.linspace(-3, 3, 1000, dtype=np.float32)
    a, b = np.empty_like(x), np.empty_like(x)
    wide(x, a)
    narrow(x, b)
    assert np.array_equal(a, b)  # (both fuse the multiply-add)
    np.testing.assert_allclose(a, x * x + 1, rtol=1e-6)
    assert '"prefer-vector-width"="512"' in wide.inspect_llvm(wide.signatures[0])
    assert "prefer-vector-width" not in narrow.inspect_llvm(narrow.signatures[0])
    if ll.get_host_cpu_features().get("avx512f", False):
        assert "zmm" in wide.inspect_asm(wide.signatures[0])
        assert "zmm" not in narrow.inspect_asm(narrow.signatures[0])
