"""`blas.gemm`: the private single-threaded OpenBLAS run inside Numba's pool, against
NumPy's matmul in every orientation, with and without accumulation into `out`."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllm.kernels import blas
from npllm.kernels._jit import PAR_MIN

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 90),
    k=st.integers(0, 70),
    n=st.integers(1, 90),
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    beta=st.sampled_from([0.0, 1.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_gemm_matches_numpy(m, k, n, trans_a, trans_b, dtype, beta, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    stored_a = np.ascontiguousarray(a.T) if trans_a else a
    stored_b = np.ascontiguousarray(b.T) if trans_b else b
    out = c0.copy()
    got = blas.gemm(stored_a, stored_b, trans_a, trans_b, out=out, beta=beta)
    assert got is out and got.dtype == dtype
    scale = max(1.0, np.sqrt(k))
    np.testing.assert_allclose(got, a.astype(np.float64) @ b + beta * c0, **{
        "rtol": TOL[dtype]["rtol"], "atol": TOL[dtype]["atol"] * scale})  # fmt: skip
    fresh = blas.gemm(stored_a, stored_b, trans_a, trans_b)
    np.testing.assert_allclose(fresh, a.astype(np.float64) @ b, rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * scale)  # fmt: skip
    bias = rng.standard_normal(n).astype(dtype)
    biased = blas.gemm(stored_a, stored_b, trans_a, trans_b, bias=bias)
    np.testing.assert_allclose(biased, a.astype(np.float64) @ b + bias, rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * scale)  # fmt: skip


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_rows_are_split_by_columns(trans_a, trans_b, dtype):
    """A product of few rows (a prompt's) goes to the threads by blocks of columns, each
    reading its part of b: every block, the last partial one, bias and beta."""
    rng = np.random.default_rng(2)
    m, k, n = 17, 96, 5 * blas._COLS + 37
    assert m < blas.FEW_ROWS and n >= 4 * blas._COLS and m * n * k >= PAR_MIN
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    c0, bias = rng.standard_normal((m, n)).astype(dtype), rng.standard_normal(n).astype(dtype)
    stored_a = np.ascontiguousarray(a.T) if trans_a else a
    stored_b = np.ascontiguousarray(b.T) if trans_b else b
    want = a.astype(np.float64) @ b
    tol = dict(rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * 10)
    np.testing.assert_allclose(blas.gemm(stored_a, stored_b, trans_a, trans_b), want, **tol)
    got = blas.gemm(stored_a, stored_b, trans_a, trans_b, out=c0.copy(), beta=0.5)
    np.testing.assert_allclose(got, want + 0.5 * c0, **tol)
    got = blas.gemm(stored_a, stored_b, trans_a, trans_b, bias=bias)
    np.testing.assert_allclose(got, want + bias, **tol)


def test_large_product_is_split_across_threads_and_still_exact():
    # big enough that gemm splits the rows into parallel chunks
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((301, 257)), rng.standard_normal((257, 129))
    assert a.shape[0] * b.shape[1] * a.shape[1] >= PAR_MIN
    np.testing.assert_allclose(blas.gemm(a, b), a @ b, rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs_and_other_dtypes():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 60)).astype(np.float32)[:, ::2]  # a strided view
    b = rng.standard_normal((30, 20)).astype(np.float32)
    np.testing.assert_allclose(blas.gemm(a, b), a @ b, rtol=1e-5, atol=1e-5)
    ai, bi = np.arange(6).reshape(2, 3), np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(blas.gemm(ai, bi), ai @ bi)  # NumPy's path, exact


def test_private_blas_is_single_threaded_and_npllm_changes_nothing_process_wide():
    assert blas._LIB.scipy_openblas_get_num_threads() == 1
    assert "OpenBLAS" in blas.config()
    # In a fresh process: importing npllm and running a kernel leaves the environment and
    # NumPy's own BLAS thread count as they were.
    code = (
        "import os, numpy, threadpoolctl\n"
        "env, pools = dict(os.environ), threadpoolctl.threadpool_info()\n"
        "import npllm, npllm.kernels as K\n"
        "K.linear_forward(numpy.ones((64, 64), 'f4'), numpy.ones((64, 64), 'f4'), None)\n"
        "after = [i for i in threadpoolctl.threadpool_info() if i['filepath'] in "
        "{p['filepath'] for p in pools}]\n"
        "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
        "assert [i['num_threads'] for i in after] == [p['num_threads'] for p in pools]\n"
        "print('ok', len(pools))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "OPENBLAS_"))}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0] == "ok" and int(run.stdout.split()[1]) >= 1


def test_an_empty_inner_dimension_gives_zeros_whatever_out_held():
    a, b = np.ones((3, 0), np.float32), np.ones((0, 4), np.float32)
    out = np.full((3, 4), np.nan, np.float32)  # what np.empty may hand back
    np.testing.assert_array_equal(blas.gemm(a, b, out=out, beta=0.0), np.zeros((3, 4)))
    out = np.full((3, 4), 2.0, np.float32)
    np.testing.assert_array_equal(blas.gemm(a, b, out=out, beta=0.5), np.ones((3, 4)))


class _FakeLibc:
    def __init__(self):
        self.calls = []
        self.gnu_get_libc_version = lambda: b"2.36"

    def mallopt(self, param, value):
        self.calls.append((param, value))


@pytest.mark.parametrize(
    "env, applied",
    [({}, True), ({"NPLLM_MALLOC": "default"}, False), ({"MALLOC_ARENA_MAX": "2"}, False)],
)
def test_malloc_thresholds_are_raised_unless_the_user_chose(monkeypatch, env, applied):
    import ctypes

    import npllm.kernels as K

    for k in [k for k in os.environ if k.startswith("MALLOC_") or k == "NPLLM_MALLOC"]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    libc = _FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    K._keep_freed_memory()
    assert libc.calls == ([(-3, K._MMAP), (-1, K._TRIM)] if applied else [])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "lead, m, k, p",
    [
        ((2, 3), 5, 7, 4),
        ((48,), 64, 64, 64),
        ((8, 6), 128, 64, 128),
        ((3,), 4, 0, 2),
        ((0,), 2, 3, 4),
    ],
)
def test_batched_matmul_equals_numpy(dtype, lead, m, k, p):
    from npllm.kernels.blas import batched_matmul

    rng = np.random.default_rng(m + k + p)
    a = rng.standard_normal((*lead, m, k)).astype(dtype)
    b = rng.standard_normal((*lead, p, k)).astype(dtype).swapaxes(-1, -2)  # a strided view
    got = batched_matmul(a, b)
    assert got.shape == (*lead, m, p) and got.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, a @ b, rtol=tol, atol=tol * max(k, 1))


def test_autograd_matmul_takes_the_batched_kernel_and_keeps_its_gradients(monkeypatch):
    """The op's forward and both backward products go through batched_matmul (Numba's
    pool) for stacks of equal batch shape, and its gradients equal NumPy's."""
    from npllm.autograd import ops
    from npllm.autograd.engine import Tensor

    calls = []
    real = ops.batched_matmul
    monkeypatch.setattr(ops, "batched_matmul", lambda a, b: calls.append(1) or real(a, b))
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal((2, 3, 4, 5)), requires_grad=True)
    b = Tensor(rng.standard_normal((2, 3, 5, 6)), requires_grad=True)
    g = rng.standard_normal((2, 3, 4, 6))
    ((a @ b) * Tensor(g)).sum().backward()
    assert len(calls) == 3
    np.testing.assert_allclose(a.grad, g @ b.data.swapaxes(-1, -2), rtol=1e-12)
    np.testing.assert_allclose(b.grad, a.data.swapaxes(-1, -2) @ g, rtol=1e-12)
