"""Every F op against torch.nn.functional in float32: outputs and input gradients agree
within 1e-5 absolute + 1e-4 relative, under both kernel backends. torch is a test-only
dependency."""

from __future__ import annotations

import numpy as np
import pytest

import npllm.functional as F
from npllm import Tensor
from npllm import kernels as K

torch = pytest.importorskip("torch")
TF = torch.nn.functional
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(params=["numpy", "numba"], autouse=True)
def backend(request):
    torch.set_num_threads(2)
    with K.use(request.param):
        yield request.param


def compare(ours, theirs, arrays, grad_of=None, scale=1.0, idx_args=()):
    """Run `ours` on Tensors and `theirs` on torch tensors made from the same float32
    arrays, backprop the same random gradient, compare outputs and gradients."""
    grad_of = range(len(arrays)) if grad_of is None else grad_of
    xs = [Tensor(a, requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    ts = [torch.tensor(a, requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    out = ours(*xs, *idx_args)
    ref = theirs(*ts, *(torch.tensor(i) for i in idx_args))
    assert out.dtype == np.float32 and out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), atol=ATOL * scale, rtol=RTOL)
    g = np.random.default_rng(99).standard_normal(out.shape).astype(np.float32)
    out.backward(g)
    ref.backward(torch.tensor(g))
    for i in grad_of:
        np.testing.assert_allclose(
            xs[i].grad, ts[i].grad.numpy(), atol=ATOL * scale, rtol=RTOL, err_msg=f"input {i}"
        )


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_linear(rng):
    compare(F.linear, TF.linear, [f32(rng, 2, 5, 24), f32(rng, 33, 24, scale=0.2), f32(rng, 33)])
    compare(F.linear, TF.linear, [f32(rng, 1, 1, 7), f32(rng, 3, 7)])


def test_relu(rng):
    compare(F.relu, TF.relu, [f32(rng, 3, 5, 7)])


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu(rng, approximate):
    x = f32(rng, 4, 9, 33, scale=3.0)
    compare(lambda x: F.gelu(x, approximate), lambda x: TF.gelu(x, approximate=approximate), [x])


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax(rng, axis):
    x = f32(rng, 3, 17, 65, scale=4.0)
    compare(lambda x: F.softmax(x, axis), lambda x: TF.softmax(x, dim=axis), [x])
    compare(lambda x: F.log_softmax(x, axis), lambda x: TF.log_softmax(x, dim=axis), [x])


def test_layer_norm(rng):
    x = f32(rng, 2, 5, 48, scale=3.0) + 2.0
    compare(
        lambda x, w, b: F.layer_norm(x, w, b),
        lambda x, w, b: TF.layer_norm(x, (48,), w, b, eps=1e-5),
        [x, 1 + f32(rng, 48, scale=0.1), f32(rng, 48, scale=0.1)],
    )
    compare(lambda x: F.layer_norm(x, None, None), lambda x: TF.layer_norm(x, (48,)), [x])


def test_embedding(rng):
    idx = rng.integers(0, 11, size=(3, 7))
    compare(
        lambda w, i: F.embedding(i, w),
        lambda w, i: TF.embedding(i, w),
        [f32(rng, 11, 16)],
        idx_args=(idx,),
    )


@pytest.mark.parametrize("shape", [(40, 65), (2, 9, 65)])
def test_cross_entropy(rng, shape):
    tg = rng.integers(0, shape[-1], size=shape[:-1])
    tg.reshape(-1)[::5] = -1
    compare(
        lambda x, t: F.cross_entropy(x, t),
        lambda x, t: TF.cross_entropy(x.reshape(-1, shape[-1]), t.reshape(-1), ignore_index=-1),
        [f32(rng, *shape, scale=3.0)],
        idx_args=(tg,),
    )


def test_cross_entropy_large_logits(rng):
    tg = rng.integers(0, 65, size=(8,))
    compare(
        lambda x, t: F.cross_entropy(x, t),
        lambda x, t: TF.cross_entropy(x, t),
        [f32(rng, 8, 65, scale=1e4)],
        idx_args=(tg,),
        scale=1e3,
    )


@pytest.mark.parametrize("tq,tk", [(16, 16), (1, 16), (5, 12)])
@pytest.mark.parametrize("causal", [True, False])
def test_attention(rng, tq, tk, causal):
    q, k, v = f32(rng, 2, 3, tq, 8), f32(rng, 2, 3, tk, 8), f32(rng, 2, 3, tk, 8)

    def theirs(q, k, v):
        if not causal or tq == tk:
            return TF.scaled_dot_product_attention(q, k, v, is_causal=causal)
        # torch's is_causal aligns the mask to the start; ours to the end (KV cache)
        mask = torch.ones(tq, tk, dtype=torch.bool).tril(diagonal=tk - tq)
        return TF.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    compare(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal), theirs, [q, k, v])


@pytest.mark.parametrize("b,t,nh,hs", [(2, 16, 3, 8), (1, 37, 2, 32), (3, 1, 4, 4)])
def test_attention_qkv(rng, b, t, nh, hs):
    """Attention straight from the q|k|v linear output: torch splits, moves the heads to
    their own axis, attends and moves them back; npllm reads them where they are."""

    def theirs(qkv):
        q, k, v = (a.reshape(b, t, nh, hs).transpose(1, 2) for a in qkv.chunk(3, dim=-1))
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(b, t, nh * hs)

    compare(lambda qkv: F.attention_qkv(qkv, nh), theirs, [f32(rng, b, t, 3 * nh * hs)])


def test_attention_qkv_with_dropout_matches_torch_given_the_same_mask(rng):
    """Dropout on the attention probabilities: torch applies our kept entries (the same
    draws as F.dropout on the probabilities from a generator in the same state)."""
    b, t, nh, hs, p = 2, 20, 3, 8, 0.25
    keep = np.random.default_rng(7).random((b, nh, t, t), dtype=np.float32) >= np.float32(p)

    def theirs(qkv):
        q, k, v = (a.reshape(b, t, nh, hs).transpose(1, 2) for a in qkv.chunk(3, dim=-1))
        s = (q @ k.transpose(-1, -2)) / hs**0.5
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        att = torch.softmax(s, -1) * torch.tensor(keep) / (1 - p)
        return (att @ v).transpose(1, 2).reshape(b, t, nh * hs)

    def ours(qkv):
        return F.attention_qkv(qkv, nh, None, p, np.random.default_rng(7))

    compare(ours, theirs, [f32(rng, b, t, 3 * nh * hs)])


def test_dropout_matches_torch_given_the_same_mask(rng):
    """Masks come from different RNGs, so compare with torch applying our mask."""
    x = f32(rng, 6, 10)
    out = F.dropout(Tensor(x), 0.3, True, np.random.default_rng(0)).data
    keep = torch.tensor(out != 0)
    ref = torch.tensor(x) * keep / 0.7
    np.testing.assert_allclose(out, ref.numpy(), atol=ATOL, rtol=RTOL)
