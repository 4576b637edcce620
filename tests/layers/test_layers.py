"""Each layer against its PyTorch counterpart (forward and gradients, float64), the
attention's causality and its two paths, dropout's statistics and modes, and gradcheck
of a whole block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import npllm.functional as F
from npllm import Tensor, kernels
from npllm.autograd import gradcheck
from npllm.autograd.ops import split
from npllm.errors import ConfigError, ShapeError
from npllm.layers import MLP, Block, CausalSelfAttention, Dropout, Embedding, LayerNorm, Linear
from tests.model.torch_gpt import TorchAttention, TorchBlock, TorchConfig, TorchMLP

B, T, C, NH = 2, 5, 8, 2


def _x(shape=(B, T, C), seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _perturb(module, scale=0.3, seed=1):
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data += rng.normal(0.0, scale, p.shape).astype(p.dtype)
    return module


def _torch_twin(ours, theirs):
    theirs.double().load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    return theirs


def _compare(ours, theirs, x):
    """Forward and every gradient (input and parameters) of sum(out * r)."""
    r = np.random.default_rng(9).standard_normal
    xt = torch.tensor(x, requires_grad=True)
    xo = Tensor(x, requires_grad=True)
    out, ref = ours(xo), theirs(xt)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    weights = r(out.shape)
    (out * weights).sum().backward()
    (ref * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    ref_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(
            p.grad, ref_params[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name
        )


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(bias):
    ours = _perturb(Linear(C, 6, bias, rng=np.random.default_rng(0)).to(np.float64))
    assert ours.weight.shape == (6, C)
    _compare(ours, _torch_twin(ours, torch.nn.Linear(C, 6, bias=bias)), _x())


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_torch(bias):
    ours = _perturb(LayerNorm(C, bias).to(np.float64))
    theirs = torch.nn.LayerNorm(C, bias=bias)
    _compare(ours, _torch_twin(ours, theirs), _x() * 3 + 1)


def test_embedding_matches_torch_and_accumulates_repeated_ids():
    ours = Embedding(10, C, rng=np.random.default_rng(0)).to(np.float64)
    theirs = _torch_twin(ours, torch.nn.Embedding(10, C))
    idx = np.array([[1, 3, 1], [9, 1, 0]])
    out, ref = ours(idx), theirs(torch.tensor(idx))
    np.testing.assert_array_equal(out.data, ref.detach().numpy())
    w = _x((2, 3, C))
    (out * w).sum().backward()
    (ref * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.weight.grad[1], w[0, 0] + w[0, 2] + w[1, 1], rtol=1e-12)


@pytest.mark.parametrize("activation", ["gelu", "gelu_exact", "relu"])
def test_mlp_matches_torch(activation):
    ours = _perturb(MLP(C, 12, activation, rng=np.random.default_rng(0)).to(np.float64))
    theirs = TorchMLP(TorchConfig(10, T, 1, NH, C, mlp_hidden=12, activation=activation))
    _compare(ours, _torch_twin(ours, theirs), _x())


@pytest.mark.parametrize("sdpa", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_attention_matches_torch(bias, sdpa):
    """Against torch's explicit attention and its scaled_dot_product_attention (the path
    the speed benchmarks' PyTorch model takes)."""
    ours = CausalSelfAttention(C, NH, bias, rng=np.random.default_rng(0)).to(np.float64)
    ours = _perturb(ours)
    theirs = TorchAttention(TorchConfig(10, T, 1, NH, C, bias=bias, sdpa=sdpa))
    _compare(ours, _torch_twin(ours, theirs), _x())


def test_block_matches_torch():
    ours = _perturb(Block(C, NH, 4 * C, rng=np.random.default_rng(0)).to(np.float64))
    theirs = TorchBlock(TorchConfig(10, T, 1, NH, C))
    _compare(ours, _torch_twin(ours, theirs), _x())


def test_attention_is_causal():
    attn = _perturb(CausalSelfAttention(C, NH, rng=np.random.default_rng(0)).to(np.float64))
    x = _x()
    changed = x.copy()
    changed[:, 3:] += 1.0  # only the future of positions 0..2
    a, b = attn(Tensor(x)).data, attn(Tensor(changed)).data
    np.testing.assert_allclose(a[:, :3], b[:, :3], rtol=1e-12, atol=1e-14)
    assert not np.allclose(a[:, 3:], b[:, 3:])


def test_explicit_attention_path_equals_the_fused_one():
    attn = _perturb(CausalSelfAttention(C, NH, rng=np.random.default_rng(0)).to(np.float64))
    q, k, v = (Tensor(_x((B, NH, T, C // NH), seed=s)) for s in (1, 2, 3))
    fused = F.scaled_dot_product_attention(q, k, v, causal=True).data
    np.testing.assert_allclose(attn._attend_with_dropout(q, k, v).data, fused, rtol=1e-12)


def _both_paths(attn, explicit, weights, backend):
    """The layer's output and the gradients of x and `weights` by attn(x) and by
    explicit(x), both from the same dropout generators' states, under `backend`."""
    g = _x(seed=9)

    def run(path):
        attn.zero_grad()
        attn.attn_dropout.rng = np.random.default_rng(5)
        attn.resid_dropout.rng = np.random.default_rng(6)
        x = Tensor(_x(), requires_grad=True)
        out = path(x)
        out.backward(g)
        return out.data, x.grad, *(w.grad.copy() for w in weights)

    with kernels.use(backend):
        fused, slow = run(attn), run(explicit)
    for a, b in zip(fused, slow):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    return fused


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_attention_dropout_in_the_kernel_equals_the_explicit_path(backend):
    """In training, the layer drops attention probabilities inside the attention kernel
    (F.attention_qkv), with the draws F.dropout would make on them: the same output and
    gradients as the explicit path (scores, softmax, F.dropout, matmul)."""
    attn = CausalSelfAttention(C, NH, dropout=0.25, rng=np.random.default_rng(0))
    attn = _perturb(attn.to(np.float64))

    def explicit(x):
        q, k, v = split(attn.c_attn(x), [C, 2 * C], axis=2)
        q, k, v = (a.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3) for a in (q, k, v))
        y = attn._attend_with_dropout(q, k, v).transpose(0, 2, 1, 3).reshape(B, T, C)
        return attn.resid_dropout(attn.c_proj(y))

    fused = _both_paths(attn, explicit, [attn.c_attn.weight], backend)
    assert not np.allclose(fused[0], attn.eval()(Tensor(_x())).data)  # dropout did something


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_llama_attention_in_the_kernel_equals_the_explicit_path(backend):
    """Transformers' Llama layout (q, k, v linears, grouped-query heads, RoPE), in
    training with dropout: F.attention_heads turns q and k and shares each k/v head in the
    kernel, with the draws F.dropout would make; the same output and gradients as the
    explicit path (rope, repeat_kv, scores, softmax, F.dropout, matmul)."""
    from npllm.arch import LLAMA_NAMES

    nh, nkv, hs = 4, 2, C // 4
    ang = np.random.default_rng(3).random((T, hs // 2)) * 3
    tables = (np.cos(ang), np.sin(ang))
    kw = dict(rng=np.random.default_rng(0), names=LLAMA_NAMES, n_kv_head=nkv, rope=tables)
    attn = _perturb(CausalSelfAttention(C, nh, False, 0.25, **kw).to(np.float64))

    def explicit(x):
        q, k, v = (lin(x) for lin in (attn.q_proj, attn.k_proj, attn.v_proj))
        q, k, v = (a.reshape(B, T, -1, hs).transpose(0, 2, 1, 3) for a in (q, k, v))
        q, k = F.rope(q, *tables), F.rope(k, *tables)
        k, v = F.repeat_kv(k, nh // nkv), F.repeat_kv(v, nh // nkv)
        y = attn._attend_with_dropout(q, k, v).transpose(0, 2, 1, 3).reshape(B, T, C)
        return attn.resid_dropout(attn.o_proj(y))

    _both_paths(attn, explicit, [attn.q_proj.weight, attn.k_proj.weight], backend)


def test_attention_dropout_path_passes_gradcheck():
    attn = CausalSelfAttention(C, NH, dropout=0.25, rng=np.random.default_rng(0))
    attn = _perturb(attn.to(np.float64))
    x = Tensor(_x((1, 4, C)), requires_grad=True)
    params = attn.parameters()

    def out(x, *ps):
        # the same masks on every call, so finite differences see one function
        attn.attn_dropout.rng = np.random.default_rng(5)
        attn.resid_dropout.rng = np.random.default_rng(6)
        for (mod, name), p in zip(slots, ps):
            setattr(mod, name, p)
        return attn(x)

    slots = [(attn.c_attn, "weight"), (attn.c_attn, "bias"), (attn.c_proj, "weight")]
    slots.append((attn.c_proj, "bias"))
    assert [id(getattr(m, n)) for m, n in slots] == [id(p) for p in params]
    train_out = out(x, *params).data
    assert not np.allclose(train_out, attn.eval()(x).data)  # dropout did something
    attn.train()
    with kernels.use("numpy"):
        assert gradcheck(out, [x, *params])


def test_block_passes_gradcheck():
    block = _perturb(Block(C, NH, 12, "gelu_exact", rng=np.random.default_rng(0)))
    block.to(np.float64)
    x = Tensor(_x((1, 3, C)), requires_grad=True)
    with kernels.use("numpy"):
        assert gradcheck(block, [x])


def test_dropout_statistics_and_modes():
    rng = np.random.default_rng(0)
    drop = Dropout(0.3, rng)
    x = Tensor(np.ones((200, 100), np.float32), requires_grad=True)
    y = drop(x)
    assert y.dtype == np.float32
    kept = y.data != 0
    assert abs(kept.mean() - 0.7) < 0.01  # 20,000 draws: sd ~0.003
    np.testing.assert_allclose(y.data[kept], 1 / 0.7, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, kept / 0.7, rtol=1e-6)  # same mask backward
    assert not np.array_equal(drop(x).data, y.data)  # a fresh mask each call
    assert drop.eval()(x) is x
    assert Dropout(0.0, rng)(x) is x
    with pytest.raises(ConfigError):
        Dropout(1.0)


def test_layer_errors():
    with pytest.raises(ConfigError, match="n_head"):
        CausalSelfAttention(10, 3)
    with pytest.raises(ConfigError, match="activation"):
        MLP(4, 8, "tanh")
    with pytest.raises(ShapeError, match=r"\(B, T, 8\)"):
        CausalSelfAttention(C, NH)(Tensor(np.zeros((2, 5, 6), np.float32)))
