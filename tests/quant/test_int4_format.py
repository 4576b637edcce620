"""The int4 format (npllm.quant): every block's error within its bound (symmetric Q4_0
rule and asymmetric), llama.cpp's nibble order, zero blocks, group sizes, state-dict
round trip, and the errors for bad shapes and damaged checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from npllm.errors import CheckpointError, ConfigError, ShapeError
from npllm.quant import (
    MIN_SUFFIX,
    SCALE_SUFFIX,
    Int4Weight,
    Int8Weight,
    load_weights,
    pack_nibbles,
    quantize_int4,
    quantize_state_dict,
    unpack_nibbles,
    weight_bytes,
)

groups = st.sampled_from([32, 64, 128])


@st.composite
def blocked_weights(draw):
    g = draw(groups)
    m, nb = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    w = draw(arrays(np.float32, (m, nb * g), elements=st.floats(-1, 1, width=32)))
    return w * np.float32(scale), g


@settings(max_examples=80, deadline=None)
@given(blocked_weights())
def test_symmetric_blocks_are_within_their_bound(wg):
    w, g = wg
    q4 = quantize_int4(w, g, symmetric=True)
    assert q4.q.dtype == np.uint8 and q4.q.shape == (w.shape[0], w.shape[1] // 2)
    assert q4.scale.dtype == np.float16 and q4.scale.shape == (w.shape[0], w.shape[1] // g)
    d = np.abs(q4.scale.astype(np.float64)).repeat(g, axis=1)  # the step of each weight
    err = np.abs(q4.dequantize().astype(np.float64) - w)
    # half a step where |w| <= 7.5 steps; a full step for the clipped opposite extreme;
    # plus float32 rounding of the product, and 1e-6 for blocks so small (max |w| below
    # ~5e-4) that their scale is a float16 subnormal or 0
    inside = np.abs(w) <= 7.5 * d
    slack = 1e-6 * np.abs(w) + 1e-6
    assert np.all(err[inside] <= d[inside] / 2 + slack[inside])
    assert np.all(err <= d * (1 + 1e-3) + slack)
    # the block's extreme lands exactly on -8 steps (up to float16's rounding of d)
    codes = unpack_nibbles(q4.q, g).reshape(w.shape)
    blocks = np.abs(w).reshape(w.shape[0], -1, g)
    extreme = np.take_along_axis(codes.reshape(blocks.shape), blocks.argmax(2)[..., None], 2)
    normal = blocks.max(2) > 1e-3  # scales in float16's normal range
    assert np.all(extreme[..., 0][normal] == 0)  # code 0 = -8 steps


@settings(max_examples=80, deadline=None)
@given(blocked_weights())
def test_asymmetric_blocks_are_within_half_a_step(wg):
    w, g = wg
    q4 = quantize_int4(w, g, symmetric=False)
    assert q4.min is not None and q4.min.dtype == np.float16
    blocks = w.reshape(w.shape[0], -1, g).astype(np.float64)
    d16, m16 = q4.scale.astype(np.float64), q4.min.astype(np.float64)
    d_true, m_true = (blocks.max(2) - blocks.min(2)) / 15, blocks.min(2)
    # half a step, plus what float16 rounding of the minimum and the step can shift
    bound = d16 / 2 + np.abs(m16 - m_true) + 15 * np.abs(d16 - d_true)
    err = np.abs(q4.dequantize().astype(np.float64) - w).reshape(blocks.shape)
    assert np.all(err <= bound[..., None] + 1e-6 * np.abs(blocks) + 1e-7)


def test_nibble_order_is_llama_cpp_q4_0s():
    # one block of 32: element j in byte j's low nibble, element j + 16 in its high one
    w = np.zeros((1, 32), np.float32)
    w[0, 0], w[0, 16], w[0, 31] = -8.0, 7.0, 1.0  # d = -(-8) / 8 = 1
    q4 = quantize_int4(w, 32)
    assert float(q4.scale[0, 0]) == 1.0
    assert q4.q[0, 0] == 0 | (15 << 4)  # codes 0 (= -8) and 15 (= +7)
    assert q4.q[0, 15] == 8 | (9 << 4)  # element 15 is 0 -> 8, element 31 is 1 -> 9
    codes = np.arange(64, dtype=np.uint8).reshape(1, 2, 32) % 16
    np.testing.assert_array_equal(unpack_nibbles(pack_nibbles(codes), 32), codes)


def test_zero_blocks_and_bad_shapes():
    w = np.zeros((2, 64), np.float32)
    w[1, 40] = 0.5
    for sym in (True, False):
        q4 = quantize_int4(w, 32, symmetric=sym)
        deq = q4.dequantize()
        assert q4.scale[0, 0] == 0 and q4.scale[0, 1] == 0 and not deq[0].any()
        np.testing.assert_allclose(deq[1], w[1], atol=1e-3)
    with pytest.raises(ConfigError, match="group size"):
        quantize_int4(np.ones((2, 48), np.float32), 32)
    with pytest.raises(ConfigError, match="multiple of 32"):
        quantize_int4(np.ones((2, 48), np.float32), 16)
    with pytest.raises(ShapeError, match="nan"):
        quantize_int4(np.full((1, 32), np.nan, np.float32))
    with pytest.raises(ShapeError, match="2-D"):
        quantize_int4(np.ones(32, np.float32))


def test_rows_is_an_embedding_lookup():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 64)).astype(np.float32)
    q4 = quantize_int4(w, 32, symmetric=False)
    idx = np.array([[3, 0], [9, 3]])
    np.testing.assert_array_equal(q4.rows(idx), q4.dequantize()[idx])
    assert q4.shape == (10, 64) and q4.group_size == 32 and not q4.symmetric


def _state_dict(rng):
    return {
        "transformer.wte.weight": rng.standard_normal((16, 64)).astype(np.float32),
        "transformer.wpe.weight": rng.standard_normal((4, 64)).astype(np.float32),
        "transformer.h.0.attn.c_attn.weight": rng.standard_normal((192, 64)).astype(np.float32),
        "transformer.h.0.attn.c_attn.bias": np.zeros(192, np.float32),
        "transformer.h.0.mlp.c_proj.weight": rng.standard_normal((64, 128)).astype(np.float32),
    }


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("emb_bits", [4, 8])
def test_state_dict_round_trip(sym, emb_bits):
    rng = np.random.default_rng(1)
    sd = _state_dict(rng)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied: dropped
    qsd = quantize_state_dict(sd, bits=4, group_size=64, symmetric=sym, embedding_bits=emb_bits)
    assert "lm_head.weight" not in qsd
    name = "transformer.h.0.attn.c_attn.weight"
    assert qsd[name].dtype == np.uint8 and qsd[name + SCALE_SUFFIX].shape == (192, 1)
    assert (name + MIN_SUFFIX in qsd) == (not sym)
    assert qsd["transformer.wpe.weight"].dtype == np.float32
    w = load_weights(qsd)
    assert isinstance(w[name], Int4Weight) and w[name].group_size == 64
    emb = w["transformer.wte.weight"]
    assert isinstance(emb, Int4Weight if emb_bits == 4 else Int8Weight)
    assert not any(k.endswith((SCALE_SUFFIX, MIN_SUFFIX)) for k in w)
    np.testing.assert_array_equal(
        w[name].dequantize(), quantize_int4(sd[name], 64, sym).dequantize()
    )
    # 4.5 (5) bits a Linear weight: more than 6x smaller at group 32
    w32 = load_weights(quantize_state_dict(sd, bits=4, symmetric=sym))
    ratio = weight_bytes(load_weights(sd), True) / weight_bytes(w32, True)
    assert ratio > 4.3  # the embedding stays int8 here; Linears alone below
    lin = sd[name].nbytes / w32[name].nbytes
    assert lin == pytest.approx(32 / 4.5 if sym else 32 / 5)


def test_damaged_int4_checkpoint_is_one_clear_error():
    rng = np.random.default_rng(2)
    qsd = quantize_state_dict(_state_dict(rng), bits=4)
    name = "transformer.h.0.attn.c_attn.weight"
    bad = dict(qsd)
    del bad[name + SCALE_SUFFIX]
    with pytest.raises(CheckpointError, match="npllm quantize --bits 4"):
        load_weights(bad)
    bad = dict(qsd)
    bad[name + SCALE_SUFFIX] = bad[name + SCALE_SUFFIX].astype(np.float32)
    with pytest.raises(CheckpointError, match="float16"):
        load_weights(bad)
    with pytest.raises(ConfigError, match="bits"):
        quantize_state_dict(_state_dict(rng), bits=3)
