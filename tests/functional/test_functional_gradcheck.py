"""Every F op against central finite differences, in float64, under both kernel backends
(the Numba kernels use exact exp/tanh/erf in float64, so this checks their algebra)."""

from __future__ import annotations

import numpy as np
import pytest

import npllm.functional as F
from npllm import Tensor, gradcheck
from npllm import kernels as K


@pytest.fixture(params=["numpy", "numba"], autouse=True)
def backend(request):
    with K.use(request.param):
        yield request.param


def t(rng, *shape, scale=1.0):
    return Tensor(rng.standard_normal(shape) * scale, requires_grad=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("lead", [(1,), (3,), (2, 3)])
def test_linear(rng, lead):
    gradcheck(F.linear, [t(rng, *lead, 5), t(rng, 4, 5), t(rng, 4)])
    gradcheck(lambda x, w: F.linear(x, w), [t(rng, *lead, 5), t(rng, 3, 5)])


def test_relu(rng):
    x = t(rng, 3, 7)
    x.data[np.abs(x.data) < 1e-3] = 0.5  # keep away from the kink
    gradcheck(F.relu, [x])


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu(rng, approximate):
    gradcheck(lambda x: F.gelu(x, approximate=approximate), [t(rng, 3, 7, scale=2.0)])


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(rng, axis):
    gradcheck(lambda x: F.softmax(x, axis=axis), [t(rng, 3, 4, 5)])


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_log_softmax(rng, axis):
    gradcheck(lambda x: F.log_softmax(x, axis=axis), [t(rng, 3, 4, 5)])


def test_layer_norm(rng):
    gradcheck(F.layer_norm, [t(rng, 2, 3, 6), t(rng, 6), t(rng, 6)])


def test_layer_norm_without_affine(rng):
    gradcheck(lambda x: F.layer_norm(x, None, None), [t(rng, 2, 3, 6)])
    gradcheck(lambda x, w: F.layer_norm(x, w, None), [t(rng, 1, 5), t(rng, 5)])
    gradcheck(lambda x, b: F.layer_norm(x, None, b), [t(rng, 1, 5), t(rng, 5)])


def test_embedding(rng):
    idx = np.array([[0, 2, 2], [1, 0, 2]])  # repeated ids accumulate
    gradcheck(lambda w: F.embedding(idx, w), [t(rng, 4, 3)])


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)])
def test_cross_entropy(rng, shape):
    targets = rng.integers(0, shape[-1], size=shape[:-1])
    targets.reshape(-1)[1] = -1
    gradcheck(lambda x: F.cross_entropy(x, targets), [t(rng, *shape)])


def test_cross_entropy_custom_ignore_index(rng):
    targets = np.array([0, 3, 3, 1])
    gradcheck(lambda x: F.cross_entropy(x, targets, ignore_index=3), [t(rng, 4, 4)])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tq,tk", [(3, 3), (1, 4), (2, 5)])
def test_attention(rng, causal, tq, tk):
    q, k, v = t(rng, 2, 2, tq, 4), t(rng, 2, 2, tk, 4), t(rng, 2, 2, tk, 4)
    gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=causal), [q, k, v])


@pytest.mark.parametrize("window,p", [(None, 0.0), (2, 0.0), (None, 0.4)])
def test_attention_qkv(rng, window, p):
    def f(qkv):  # the same dropout draws every call
        return F.attention_qkv(qkv, 2, window, p, np.random.default_rng(3))

    gradcheck(f, [t(rng, 2, 5, 3 * 2 * 3)])


def test_dropout(rng):
    gradcheck(lambda x: F.dropout(x, 0.3, True, np.random.default_rng(1)), [t(rng, 3, 7)])


def test_composed_block(rng):
    """A miniature transformer block: the ops compose and their gradients still agree."""
    B, T, C, nh = 1, 3, 4, 2
    x, w_ln, b_ln = t(rng, B, T, C), t(rng, C), t(rng, C)
    w_qkv, w_out = t(rng, 3 * C, C, scale=0.5), t(rng, C, C, scale=0.5)

    def block(x, w_ln, b_ln, w_qkv, w_out):
        h = F.layer_norm(x, w_ln, b_ln)
        qkv = F.linear(h, w_qkv).reshape(B, T, 3, nh, C // nh).transpose(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
        return F.gelu(F.linear(y, w_out)) + x

    gradcheck(block, [x, w_ln, b_ln, w_qkv, w_out])
