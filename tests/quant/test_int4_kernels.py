"""The int4 kernels (npllm.kernels.int4) equal their NumPy reference: the register kernel
(matrix-vector and small batches on int8 activations, serial and parallel, each of the
IR dot products the CPU can run), the tiled BLAS path of prompts, symmetric and
asymmetric blocks of 32/64/128; the activations' int8 codes equal NumPy's and their
error stays within its bound; the fused decode step on int4 weights equals the NumPy
forward; and the shape errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllm import kernels
from npllm.decoder import Decoder
from npllm.errors import ShapeError
from npllm.generate import generate
from npllm.gpt import GPT, GPTConfig
from npllm.kernels._jit import jit
from npllm.kernels.int4 import (
    dequantize_numpy,
    int4_linear_numba,
    int4_linear_numpy,
    kernel_layout,
    prepared_matmul,
    quantize_rows,
    quantize_rows_numpy,
)
from npllm.kernels.int4_dot import dot_kind, make_int4_tile
from npllm.quant import load_weights, quantize_int4, quantize_state_dict


def _weight(rng, m, k, g, sym):
    q4 = quantize_int4(rng.standard_normal((m, k)).astype(np.float32), g, sym)
    return (q4, *kernel_layout(q4.q, q4.scale, q4.offsets()))


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 20),  # rows of x: register kernel below 8, tiles from 8
    st.integers(1, 140),
    st.sampled_from([(32, 1), (32, 3), (64, 2), (128, 3)]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 99),
)
def test_numba_int4_linear_equals_its_numpy_reference(n, m, gk, sym, bias, seed):
    g, blocks = gk
    k = g * blocks
    rng = np.random.default_rng(seed)
    q4, q, s = _weight(rng, m, k, g, sym)
    x = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    ref = int4_linear_numpy(x, q, s, b)
    got = int4_linear_numba(x, q, s, b)
    assert got.dtype == np.float32 and got.shape == (n, m)
    scale = np.abs(x) @ np.abs(q4.dequantize()).T + 1
    np.testing.assert_array_less(np.abs(got - ref), 2e-6 * scale)
    assert s.shape[0] == (1 if sym else 2)  # symmetric: scales only, offsets -8 * scale
    # the reference is x @ (the format's own dequantized matrix).T
    np.testing.assert_allclose(dequantize_numpy(q, s), q4.dequantize(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("in_parallel", [False, True])
def test_register_kernel_serial_and_parallel_at_the_guppy_shape(in_parallel):
    rng = np.random.default_rng(0)
    q4, q, s = _weight(rng, 1152, 384, 32, True)
    x = rng.standard_normal((2, 384)).astype(np.float32)
    b = rng.standard_normal(1152).astype(np.float32)
    out = np.empty((2, 1152), np.float32)
    prepared_matmul(x, q, s, b, out, in_parallel)
    # float32 sums of 384 products in another order: relative to the sum of magnitudes
    scale = np.abs(x) @ np.abs(q4.dequantize()).T + 1
    np.testing.assert_array_less(np.abs(out - int4_linear_numpy(x, q, s, b)), 2e-6 * scale)


def test_shape_errors_name_the_problem():
    rng = np.random.default_rng(1)
    _, q, s = _weight(rng, 8, 64, 32, True)
    x = np.ones((1, 64), np.float32)
    with pytest.raises(ShapeError, match="K / 8"):
        int4_linear_numba(np.ones((1, 32), np.float32), q, s)
    with pytest.raises(ShapeError, match="uint8"):
        int4_linear_numba(x, q.astype(np.int8), s)
    with pytest.raises(ShapeError, match="multiple of 32"):
        int4_linear_numba(x, q, s[:, :1].repeat(4, axis=1))
    with pytest.raises(ShapeError, match="bias"):
        int4_linear_numba(x, q, s, np.ones(3, np.float32))


def _quantized(x, nb):
    xq = np.empty(x.shape, np.int8)
    dx, sq = np.empty((2, x.shape[0], nb), np.float32)
    quantize_rows(x, nb, xq, dx, sq)
    return xq, dx, sq


@pytest.mark.parametrize("nb", [1, 3, 12])
def test_activation_codes_equal_numpy(nb):
    rng = np.random.default_rng(nb)
    x = (rng.standard_normal((4, 32 * nb)) * rng.uniform(1e-3, 1e3, (4, 1))).astype(np.float32)
    x[1, :32] = 0  # a block of zeros: scale 0, codes 0
    x[2, 5] = x[2, :32].max() * 3  # the largest input of a block gets code 127
    xq, dx, sq = _quantized(x, nb)
    rq, rdx, rsq = quantize_rows_numpy(x, nb)
    np.testing.assert_array_equal(xq, rq)  # IEEE arithmetic on both sides: the same codes
    np.testing.assert_array_equal(dx, rdx)
    np.testing.assert_allclose(sq, rsq, rtol=1e-6)
    assert xq[1, :32].tolist() == [0] * 32 and dx[1, 0] == 0 and xq[2, 5] == 127
    # the codes reconstruct x to within half a step of each block
    xhat = (xq.reshape(4, nb, 32).astype(np.float32) * dx[..., None]).reshape(x.shape)
    step = np.repeat(dx, 32, axis=1)
    assert np.all(np.abs(xhat - x) <= 0.5 * step * (1 + 1e-5))


def test_a_nan_or_inf_activation_gives_nan_outputs_not_finite_ones():
    rng = np.random.default_rng(5)
    _, w, s = _weight(rng, 40, 96, 32, True)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    x[0, 40], x[1, 3] = np.nan, np.inf
    got, ref = int4_linear_numba(x, w, s), int4_linear_numpy(x, w, s)
    assert np.isnan(got[:2]).all() and np.isnan(ref[:2]).all()
    assert np.isfinite(got[2]).all()
    np.testing.assert_array_equal(_quantized(x, 3)[0], quantize_rows_numpy(x, 3)[0])


@pytest.mark.parametrize("sym", [True, False])
def test_int8_activation_error_within_its_bound(sym):
    rng = np.random.default_rng(3)
    g, m, k = 32, 200, 384
    q4, w, s = _weight(rng, m, k, g, sym)
    x = rng.standard_normal((3, k)).astype(np.float32)
    got = int4_linear_numba(x, w, s)
    wf = q4.dequantize()
    exact = x.astype(np.float64) @ wf.T.astype(np.float64)
    # |x - xhat| <= dx_c / 2 per input of block c, so the error of y[m] is at most
    # sum_c dx_c / 2 * sum over block c of |W[m, k]| (plus float32 rounding)
    _, dx, _ = quantize_rows_numpy(x, k // g)
    wabs = np.abs(wf).reshape(m, k // g, g).sum(axis=2)  # (m, nb)
    bound = 0.5 * dx @ wabs.T + 2e-6 * (np.abs(x) @ np.abs(wf).T + 1)
    err = np.abs(got - exact)
    assert np.all(err <= bound)
    assert err.max() > 1e-4  # it is the int8 path: the bound is not vacuous here
    # and in relative terms: a percent of the output's scale at most
    assert np.all(err <= 0.01 * np.abs(x) @ np.abs(wf).T)


@pytest.mark.parametrize("kind", ["generic", "avx2", "vnni"])
def test_every_ir_dot_the_cpu_runs_equals_the_reference(kind):
    from numba.core.registry import cpu_target

    runs = {"vnni": ("vnni", "avx2", "generic"), "avx2": ("avx2", "generic")}
    best = dot_kind(cpu_target.target_context.codegen()._tm_features)
    if kind not in runs.get(best, ("generic",)):
        pytest.skip(f"this CPU has no {kind}")
    tile = make_int4_tile(kind)

    @jit(cache=False)
    def whole_tiles(xq, dx, sq, w, s, b, out):
        for t in range(out.shape[1] // 16):
            tile(w, xq[0], dx[0], sq[0], s, b, out[0], t, w.shape[1] // s.shape[1])

    rng = np.random.default_rng(4)
    for g, sym in [(32, True), (64, False), (128, True)]:
        q4, w, s = _weight(rng, 64, 256, g, sym)
        x = rng.standard_normal((1, 256)).astype(np.float32)
        b = rng.standard_normal(64).astype(np.float32)
        out = np.empty((1, 64), np.float32)
        whole_tiles(*_quantized(x, 256 // g), w, s, b, out)
        scale = np.abs(x) @ np.abs(q4.dequantize()).T + 1
        np.testing.assert_array_less(np.abs(out - int4_linear_numpy(x, w, s, b)), 2e-6 * scale)
    asm = next(iter(whole_tiles.inspect_asm().values()))
    wanted = {"vnni": "vpdpbusd", "avx2": "vpmaddubsw", "generic": ""}[kind]
    assert wanted in asm


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("sym", [True, False])
def test_fused_int4_decode_step_equals_the_numpy_forward(family, sym):
    extra = (
        {}
        if family == "gpt2"
        else dict(
            pos_embedding="rope",
            norm="rmsnorm",
            mlp="swiglu",
            n_kv_head=1,
            bias=False,
            mlp_hidden=96,
        )
    )
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=64, **extra)
    sd = GPT(cfg).state_dict()
    w = load_weights(quantize_state_dict(sd, bits=4, symmetric=sym, embedding_bits=4))
    dec = Decoder(cfg, w)
    prompt, nxt = np.array([[1, 2, 3, 4, 5]]), np.array([[7]])
    cache = dec.new_cache(1)
    dec.forward(prompt, cache, last_only=True)
    fused = dec.forward(nxt, cache, last_only=True)
    with kernels.use("numpy"):
        cache = dec.new_cache(1)
        dec.forward(prompt, cache, last_only=True)
        ref = dec.forward(nxt, cache, last_only=True)
    np.testing.assert_allclose(fused, ref, rtol=1e-4, atol=1e-5)
    full = dec.forward(np.concatenate([prompt, nxt], axis=1))[:, -1]
    np.testing.assert_allclose(full, ref, rtol=1e-4, atol=1e-5)
    ids = generate(dec, [1, 2, 3], 8, greedy=True)[0]
    with kernels.use("numpy"):
        assert generate(dec, [1, 2, 3], 8, greedy=True)[0].tolist() == ids.tolist()
