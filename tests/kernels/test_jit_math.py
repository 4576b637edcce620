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


def test_float64_is_exact():
    x = np.linspace(-30.0, 30.0, 1001)
    np.testing.assert_array_equal(apply_math("exp", x), np.exp(x))
    np.testing.assert_array_equal(apply_math("erf", x), [math.erf(v) for v in x])
