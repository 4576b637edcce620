"""int8 quantization: the scale/2 error bound, symmetric range, zero rows, the Numba
dequantizing matmul against its NumPy reference, and state-dict conversion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from npllm.errors import ShapeError
from npllm.kernels.int8 import int8_linear_numba, int8_linear_numpy
from npllm.quant import (
    SCALE_SUFFIX,
    Int8Weight,
    dequantize,
    load_weights,
    quantize,
    quantize_state_dict,
)

weights = st.tuples(st.integers(1, 12), st.integers(1, 40)).flatmap(
    lambda s: arrays(np.float32, s, elements=st.floats(-3, 3, width=32))
)


@settings(max_examples=60, deadline=None)
@given(weights)
def test_quantize_error_is_at_most_half_a_step_per_weight(w):
    wq, scale = quantize(w)
    assert wq.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (w.shape[0],)
    assert np.abs(wq.astype(int)).max() <= 127  # symmetric: -128 unused
    err = np.abs(dequantize(wq, scale) - w)
    # half a step, plus float32 rounding of the product itself
    assert np.all(err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-7)
    np.testing.assert_allclose(scale, np.abs(w).max(axis=1) / 127, rtol=1e-6)


def test_each_row_uses_the_full_range_and_zero_rows_stay_zero():
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.0, -2.0]], np.float32)
    wq, scale = quantize(w)
    assert wq[0, 1] == -127 and wq[2, 0] == 127
    assert scale[1] == 0 and not wq[1].any()
    with pytest.raises(ShapeError):
        quantize(np.array([1.0, np.nan], np.float32)[None])


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 9), st.integers(1, 70), st.integers(1, 300), st.booleans(), st.integers(0, 99)
)
def test_numba_int8_matmul_equals_its_numpy_reference(n, m, k, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(np.float32)
    wq, scale = quantize(rng.standard_normal((m, k)).astype(np.float32))
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    ref = int8_linear_numpy(x, wq, scale, b)
    got = int8_linear_numba(x, wq, scale, b)
    assert got.dtype == np.float32 and got.shape == (n, m)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.sqrt(k))


def test_int8_matmul_takes_the_parallel_path_on_big_matrices_too():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 384)).astype(np.float32)
    wq, scale = quantize(rng.standard_normal((1152, 384)).astype(np.float32))
    np.testing.assert_allclose(
        int8_linear_numba(x, wq, scale), int8_linear_numpy(x, wq, scale), rtol=1e-5, atol=1e-4
    )
    with pytest.raises(ShapeError, match="int8"):
        int8_linear_numba(x, wq.astype(np.float32), scale)


def test_state_dict_round_trip_keeps_names_and_shrinks_linears():
    rng = np.random.default_rng(1)
    sd = {
        "transformer.wte.weight": rng.standard_normal((10, 8)).astype(np.float32),
        "transformer.wpe.weight": rng.standard_normal((4, 8)).astype(np.float32),
        "transformer.h.0.attn.c_attn.weight": rng.standard_normal((24, 8)).astype(np.float32),
        "transformer.h.0.attn.c_attn.bias": np.zeros(24, np.float32),
        "transformer.h.0.mlp.c_proj.weight": rng.standard_normal((8, 32)).astype(np.float32),
        "transformer.ln_f.weight": np.ones(8, np.float32),
    }
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    q = quantize_state_dict(sd)
    assert "lm_head.weight" not in q
    assert q["transformer.h.0.attn.c_attn.weight"].dtype == np.int8
    assert q["transformer.h.0.attn.c_attn.weight" + SCALE_SUFFIX].shape == (24,)
    assert q["transformer.wpe.weight"].dtype == np.float32
    assert q["transformer.h.0.attn.c_attn.bias"].dtype == np.float32
    assert quantize_state_dict(sd, embedding=False)["transformer.wte.weight"].dtype == np.float32
    w = load_weights(q)
    emb = w["transformer.wte.weight"]
    assert isinstance(emb, Int8Weight)
    np.testing.assert_allclose(emb.rows(np.array([[3, 4]]))[0], emb.dequantize()[[3, 4]])
    proj = sd["transformer.h.0.mlp.c_proj.weight"]
    np.testing.assert_allclose(
        w["transformer.h.0.mlp.c_proj.weight"].dequantize(),
        proj,
        atol=float(np.abs(proj).max()) / 254 + 1e-6,
    )
