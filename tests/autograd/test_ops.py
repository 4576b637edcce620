"""Every autograd op against central finite differences, on shapes drawn by hypothesis
(broadcasting, size-1 and empty dimensions included), plus forward values against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from npllm import Tensor, concatenate, split
from npllm.autograd import gradcheck
from tests.autograd.strategies import (
    SETTINGS,
    arrays,
    away_from_zero,
    broadcast_pairs,
    nonempty_shapes,
    param,
    shapes,
)

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@settings(**SETTINGS)
@given(data=st.data(), pair=broadcast_pairs)
def test_binary_broadcasting(name, data, pair):
    op, ref = BINARY[name]
    sa, sb = pair.input_shapes
    a = data.draw(arrays(sa))
    b = away_from_zero(data.draw(arrays(sb))) if name == "div" else data.draw(arrays(sb))
    x, y = param(a), param(b)
    np.testing.assert_allclose(op(x, y).data, ref(a, b))
    assert gradcheck(op, [x, y])


@settings(**SETTINGS)
@given(data=st.data(), shape=shapes)
def test_scalar_operands_and_reflected_ops(data, shape):
    a = away_from_zero(data.draw(arrays(shape)))
    x = param(a)
    for fn in (
        lambda t: 2.5 - t,
        lambda t: 3.0 * t + 1.0,
        lambda t: 1.5 / t,
        lambda t: -t,
        lambda t: t**3,
        lambda t: np.float64(2.0) * t,
    ):
        assert gradcheck(fn, [x])


@settings(**SETTINGS)
@given(data=st.data(), pair=broadcast_pairs)
def test_pow_with_tensor_exponent(data, pair):
    sa, sb = pair.input_shapes
    base = np.abs(data.draw(arrays(sa))) + 0.5
    expo = data.draw(arrays(sb, -1.5, 1.5))
    x, y = param(base), param(expo)
    np.testing.assert_allclose((x**y).data, base**expo)
    assert gradcheck(lambda a, b: a**b, [x, y])


@settings(**SETTINGS)
@given(
    data=st.data(),
    batch=st.sampled_from([(), (2,), (1, 3), (2, 1)]),
    batch_b=st.sampled_from([(), (1,), (3,)]),
    n=st.integers(0, 3),
    k=st.integers(1, 4),
    m=st.integers(0, 3),
)
def test_batched_matmul(data, batch, batch_b, n, k, m):
    try:
        np.broadcast_shapes(batch, batch_b)
    except ValueError:
        assume(False)
    a = data.draw(arrays((*batch, n, k)))
    b = data.draw(arrays((*batch_b, k, m)))
    x, y = param(a), param(b)
    np.testing.assert_allclose((x @ y).data, a @ b)
    assert gradcheck(lambda p, q: p @ q, [x, y])


@pytest.mark.parametrize(
    "sa, sb", [((3,), (3, 2)), ((2, 3), (3,)), ((3,), (3,)), ((2, 4, 3), (3,))]
)
def test_matmul_with_vectors(sa, sb):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    x, y = param(a), param(b)
    np.testing.assert_allclose((x @ y).data, a @ b)
    assert gradcheck(lambda p, q: p @ q, [x, y])
    assert gradcheck(lambda q: a @ q, [y])  # ndarray @ Tensor goes through __rmatmul__


def _axis_args(shape):
    """Every way to reduce: None, each single axis (also negative), and all axes as a tuple."""
    nd = len(shape)
    return [None, *range(nd), *(-i for i in range(1, nd + 1)), tuple(range(nd))]


@pytest.mark.parametrize("name", ["sum", "mean"])
@settings(**SETTINGS)
@given(data=st.data(), shape=shapes, keepdims=st.booleans())
def test_sum_mean(name, data, shape, keepdims):
    a = data.draw(arrays(shape))
    axis = data.draw(st.sampled_from(_axis_args(shape)))
    if name == "mean":
        assume(a.size > 0 and all(shape[i] > 0 for i in range(len(shape))))
    x = param(a)
    out = getattr(x, name)(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(out.data, getattr(np, name)(a, axis=axis, keepdims=keepdims))
    assert gradcheck(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims), [x])


@settings(**SETTINGS)
@given(data=st.data(), shape=nonempty_shapes, keepdims=st.booleans())
def test_max(data, shape, keepdims):
    # distinct values so finite differences do not straddle a tie
    n = int(np.prod(shape))
    a = data.draw(st.permutations(range(n))).copy() if n else []
    a = np.asarray(a, dtype=np.float64).reshape(shape) * 0.1
    axis = data.draw(st.sampled_from(_axis_args(shape)))
    x = param(a)
    np.testing.assert_array_equal(
        x.max(axis=axis, keepdims=keepdims).data, a.max(axis=axis, keepdims=keepdims)
    )
    assert gradcheck(lambda t: t.max(axis=axis, keepdims=keepdims), [x])


def test_max_splits_gradient_among_ties():
    x = param(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]]))
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [0.5, 0, 0.5]])


@settings(**SETTINGS)
@given(data=st.data(), shape=shapes)
def test_reshape(data, shape):
    a = data.draw(arrays(shape))
    x = param(a)
    assert x.reshape(-1).shape == (a.size,)
    assert x.reshape((a.size, 1)).shape == (a.size, 1)
    assert gradcheck(lambda t: t.reshape(-1) * np.arange(a.size), [x])


@settings(**SETTINGS)
@given(data=st.data(), shape=shapes)
def test_transpose_permutes_like_numpy(data, shape):
    a = data.draw(arrays(shape))
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    x = param(a)
    np.testing.assert_array_equal(x.transpose(*axes).data, np.transpose(a, axes))
    np.testing.assert_array_equal(x.transpose().data, a.T)
    np.testing.assert_array_equal(x.T.data, a.T)
    w = np.random.default_rng(1).standard_normal(np.transpose(a, axes).shape)
    assert gradcheck(lambda t: t.transpose(*axes) * w, [x])


UNARY = {
    "exp": (lambda t: t.exp(), np.exp, lambda a: a),
    "log": (lambda t: t.log(), np.log, lambda a: np.abs(a) + 0.2),
    "tanh": (lambda t: t.tanh(), np.tanh, lambda a: a),
    "relu": (lambda t: t.relu(), lambda a: np.maximum(a, 0), away_from_zero),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, lambda a: np.abs(a) + 0.2),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@settings(**SETTINGS)
@given(data=st.data(), shape=shapes)
def test_unary(name, data, shape):
    op, ref, domain = UNARY[name]
    a = domain(data.draw(arrays(shape)))
    x = param(a)
    np.testing.assert_allclose(op(x).data, ref(a))
    assert gradcheck(op, [x])


def test_basic_indexing():
    rng = np.random.default_rng(0)
    x = param(rng.standard_normal((3, 4, 5)))
    for key in [
        1,
        -1,
        (slice(None), 2),
        (Ellipsis, slice(1, 4)),
        (None, 0, slice(None, None, 2)),
        (),
    ]:
        np.testing.assert_array_equal(x[key].data, x.data[key])
        assert gradcheck(lambda t, key=key: t[key], [x])


def test_advanced_indexing_accumulates_repeated_indices():
    x = param(np.arange(5.0))
    idx = np.array([0, 2, 2, 4, 2])
    x[idx].sum().backward()
    np.testing.assert_array_equal(x.grad, [1, 0, 3, 0, 1])
    y = param(np.random.default_rng(0).standard_normal((4, 3)))
    rows = Tensor(np.array([[3, 0], [3, 3]]))  # an index Tensor, repeated rows
    assert gradcheck(lambda t: t[rows], [y])
    assert gradcheck(lambda t: t[np.array([1, 1, 0]), np.array([2, 2, 2])], [y])
    assert gradcheck(lambda t: t[:, np.array([0, 0, 2])], [y])
    assert gradcheck(lambda t: t[y.data > 0], [y])


@settings(**SETTINGS)
@given(
    data=st.data(), shape=nonempty_shapes, sizes=st.lists(st.integers(0, 3), min_size=1, max_size=3)
)
def test_concatenate_and_split(data, shape, sizes):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    parts = []
    for n in sizes:
        s = list(shape)
        s[axis] = n
        parts.append(param(data.draw(arrays(tuple(s)))))
    out = concatenate(parts, axis=axis)
    np.testing.assert_array_equal(out.data, np.concatenate([p.data for p in parts], axis=axis))
    assert gradcheck(lambda *ts: concatenate(ts, axis=axis), parts)

    whole = param(out.data)
    points = list(np.cumsum(sizes)[:-1])
    pieces = split(whole, points, axis=axis)
    for piece, p in zip(pieces, parts):
        np.testing.assert_array_equal(piece.data, p.data)
    w = [np.random.default_rng(i).standard_normal(p.shape) for i, p in enumerate(pieces)]
    assert gradcheck(
        lambda t: concatenate(
            [
                (q * wi).sum(keepdims=True).reshape(1)
                for q, wi in zip(split(t, points, axis=axis), w)
            ]
        ),
        [whole],
    )


def test_split_into_equal_sections():
    x = param(np.arange(12.0).reshape(2, 6))
    a, b, c = split(x, 3, axis=1)
    assert a.shape == b.shape == c.shape == (2, 2)
    (a * 1 + b * 2 + c * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [[1, 1, 2, 2, 3, 3]] * 2)


def test_float32_stays_float32():
    x = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    for out in (x * 2.0, 2.0 - x, x / 3, x**2, (x @ x.T).sum(), x.mean(), x.exp(), x[0]):
        assert out.dtype == np.float32
    (x * 2.0).sum().backward()
    assert x.grad.dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.zeros(2)).dtype == np.float64
