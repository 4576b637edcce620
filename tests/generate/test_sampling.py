"""Samplers: exact token sets kept by top-k / top-p, the CTRL repetition-penalty rule,
greedy and seeded draws, argument validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from npllm.errors import ConfigError, NpllmError
from npllm.sampling import (
    apply_repetition_penalty,
    check_sampling_args,
    process_logits,
    sample,
    softmax,
    top_k_filter,
    top_p_filter,
)

# Rows of logits; a small value set makes ties at the top-k / top-p boundary common.
finite = st.floats(-20, 20, width=32)
tied = st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0])
logit_rows = st.integers(1, 40).flatmap(
    lambda v: st.one_of(
        arrays(np.float32, (2, v), elements=finite),
        arrays(np.float32, (2, v), elements=tied),
    )
)


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.integers(1, 50))
def test_top_k_keeps_exactly_the_k_largest_and_their_ties(logits, k):
    out = top_k_filter(logits, k)
    for row, filtered in zip(logits, out):
        kept = set(np.flatnonzero(np.isfinite(filtered)))
        # expected: every token at least as large as the k-th largest (sorted descending)
        kth = np.sort(row)[::-1][min(k, row.size) - 1]
        assert kept == {i for i, x in enumerate(row) if x >= kth}
        assert len(kept) >= min(k, row.size)
        if len(set(row.tolist())) == row.size:  # no ties: exactly k
            assert len(kept) == min(k, row.size)
        np.testing.assert_array_equal(filtered[list(kept)], row[list(kept)])


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_top_set_reaching_p(logits, p):
    out = top_p_filter(logits, p)
    # the float32 probabilities the sampler draws from: logits closer than float32 can
    # tell apart are ties, and ties are kept together
    probs = softmax(logits).astype(np.float64)
    for row_p, filtered in zip(probs, out):
        kept = np.isfinite(filtered)
        assert kept.any()
        lo = row_p[kept].min()
        # a top set: nothing dropped is more likely than anything kept, and ties are kept
        assert not np.any(row_p[~kept] >= lo)
        # it reaches p ...
        assert row_p[kept].sum() >= p - 1e-5
        # ... and is the smallest such: without its least likely tier, the mass is below p
        assert row_p[kept & (row_p > lo)].sum() < p + 1e-5


def test_top_p_one_keeps_everything_and_top_p_tiny_keeps_the_argmax():
    logits = np.array([[0.1, 3.0, -2.0, 1.0]], np.float32)
    assert np.isfinite(top_p_filter(logits, 1.0)).all()
    assert np.flatnonzero(np.isfinite(top_p_filter(logits, 1e-6))).tolist() == [1]


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, (2, 12), elements=finite),
    arrays(np.int64, (2, 5), elements=st.integers(0, 11)),
    st.floats(0.2, 5.0),
)
def test_repetition_penalty_follows_the_ctrl_rule(logits, context, penalty):
    out = apply_repetition_penalty(logits, context, penalty)
    pen = np.float32(penalty)
    for b in range(2):
        seen = set(context[b].tolist())
        for i, x in enumerate(logits[b]):
            if i not in seen:
                assert out[b, i] == x
            elif x > 0:
                assert out[b, i] == x / pen  # divided once, however often it occurs
            else:
                assert out[b, i] == x * pen
    # the caller's array is left alone
    assert out is not logits


def test_repetition_penalty_lowers_the_probability_of_seen_tokens():
    logits = np.array([[2.0, -1.0, 0.5, 0.3]], np.float32)
    out = apply_repetition_penalty(logits, np.array([[0, 1]]), 1.5)
    p0, p1 = softmax(logits)[0], softmax(out)[0]
    assert p1[0] < p0[0] and p1[1] < p0[1]


def test_greedy_is_argmax_and_temperature_zero_is_not_divided():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50)).astype(np.float32)
    assert sample(logits, rng, greedy=True).tolist() == logits.argmax(-1).tolist()
    np.testing.assert_array_equal(
        process_logits(logits, np.zeros((3, 0), np.int64), temperature=0.0), logits
    )


def test_seeded_draws_are_reproducible_and_follow_the_distribution():
    logits = np.array([[np.log(0.5), np.log(0.3), np.log(0.2), -np.inf]], np.float32)

    def draws(seed):
        rng = np.random.default_rng(seed)
        return [int(sample(logits, rng)[0]) for _ in range(4000)]

    a, b = draws(1), draws(1)
    assert a == b
    freq = np.bincount(a, minlength=4) / len(a)
    np.testing.assert_allclose(freq[:3], [0.5, 0.3, 0.2], atol=0.03)
    assert freq[3] == 0  # a zero-probability token is never drawn


def test_temperature_sharpens_and_flattens():
    logits = np.array([[1.0, 0.0, -1.0]], np.float32)
    ctx = np.zeros((1, 0), np.int64)
    cold = softmax(process_logits(logits, ctx, temperature=0.5))[0, 0]
    hot = softmax(process_logits(logits, ctx, temperature=2.0))[0, 0]
    assert hot < softmax(logits)[0, 0] < cold


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
    ],
)
def test_invalid_arguments_raise_a_clear_error(kwargs, word):
    args = dict(temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0) | kwargs
    with pytest.raises(ConfigError, match=word) as e:
        check_sampling_args(**args)
    assert isinstance(e.value, NpllmError)


@pytest.mark.parametrize("shape", [(1, 4096), (16, 4096), (3, 7), (5, 1)])
def test_the_draws_cdf_kernel_is_numpys_cumsum_to_the_bit(shape):
    """`sample` sums the probabilities with kernels.decode.cumsum_rows (the rows side by
    side) where NumPy's backend uses np.cumsum: the same float64 sums, so the same draws."""
    from npllm import kernels
    from npllm.kernels.decode import cumsum_rows

    rng = np.random.default_rng(shape[0])
    logits = rng.normal(0, 4, shape).astype(np.float32)
    logits[rng.random(shape) < 0.2] = -np.inf  # zero probabilities, as top-k/top-p leave
    logits[:, 0] = 0.0
    probs = softmax(logits)
    out = np.empty(shape, np.float64)
    cumsum_rows(probs, out)
    np.testing.assert_array_equal(out, np.cumsum(probs, axis=-1, dtype=np.float64))
    draws = {}
    for backend in ("numba", "numpy"):
        with kernels.use(backend):
            draws[backend] = sample(logits, np.random.default_rng(7))
    np.testing.assert_array_equal(draws["numba"], draws["numpy"])
