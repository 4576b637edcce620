"""The Llama family's ops (RMSNorm, SwiGLU, RoPE, grouped-query repetition, sliding-window
attention): the Numba kernel against its NumPy reference, float64 gradcheck on hypothesis
shapes under both backends, and forward + backward parity with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import npllm.functional as F
from npllm import Tensor, gradcheck
from npllm import kernels as K
from npllm.layers.rope import inv_freq, rope_tables

SETTINGS = dict(max_examples=20, deadline=None)
seeds = st.integers(0, 2**16)


def _t(a: np.ndarray) -> Tensor:
    return Tensor(np.array(a), requires_grad=True)


def _tables(T: int, hs: int, seed: int):
    scaling = [None, {"rope_type": "linear", "factor": 2.0}][seed % 2]
    return rope_tables(np.arange(T) + seed % 5, *inv_freq(hs, 100.0, scaling, T))


# ---- kernels: Numba against the NumPy reference ------------------------------------------
@settings(**SETTINGS)
@given(st.integers(1, 40), st.integers(1, 70), st.booleans(), seeds)
def test_rmsnorm_and_swiglu_kernels_match_their_references(n, c, weighted, seed):
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal((2, n, c)).astype(np.float32)
    w = rng.standard_normal(c).astype(np.float32) if weighted else None
    ref, got = (
        K.get("rmsnorm_forward", "numpy")(x, w, 1e-5),
        K.get("rmsnorm_forward", "numba")(x, w, 1e-5),
    )
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    bref = K.get("rmsnorm_backward", "numpy")(dy, x, ref[1], w)
    bgot = K.get("rmsnorm_backward", "numba")(dy, x, ref[1], w)
    for a, b in zip(bgot, bref):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    g, u = x * 4, dy
    np.testing.assert_allclose(
        K.get("swiglu_forward", "numba")(g, u),
        K.get("swiglu_forward", "numpy")(g, u),
        rtol=1e-5,
        atol=1e-6,
    )
    for a, b in zip(
        K.get("swiglu_backward", "numba")(dy, g, u), K.get("swiglu_backward", "numpy")(dy, g, u)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@settings(**SETTINGS)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(1, 8), seeds)
def test_rope_kernel_matches_its_reference_and_its_backward_is_the_inverse(n, T, half, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, 2 * half)).astype(np.float32)
    cos, sin = (a.astype(np.float32) for a in _tables(T, 2 * half, seed))
    for name in ("rope_forward", "rope_backward"):
        np.testing.assert_allclose(
            K.get(name, "numba")(x, cos, sin), K.get(name, "numpy")(x, cos, sin), atol=1e-6
        )
    if seed % 2 == 0:  # unscaled tables are rotations: backward undoes forward
        back = K.get("rope_backward", "numba")(
            K.get("rope_forward", "numba")(x, cos, sin), cos, sin
        )
        np.testing.assert_allclose(back, x, atol=1e-5)


@settings(**SETTINGS)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(0, 4), st.integers(1, 5), seeds)
def test_windowed_attention_reference_hides_exactly_the_keys_outside_the_window(
    nh, T, extra, window, seed
):
    # a window covering every key is plain causal attention; both backends agree
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, nh, T, 4)).astype(np.float32)
    k, v = rng.standard_normal((2, 1, nh, T + extra, 4)).astype(np.float32)
    ref = K.get("attention_forward", "numpy")(q, k, v, True, window)
    got = K.get("attention_forward", "numba")(q, k, v, True, window)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    wide = K.get("attention_forward", "numpy")(q, k, v, True, T + extra)
    for a, b in zip(wide, K.get("attention_forward", "numba")(q, k, v, True)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    att = ref[1]
    i = np.arange(T)[:, None] + extra  # query positions
    j = np.arange(T + extra)[None, :]
    assert np.all(att[..., (j > i) | (j <= i - window)] == 0)  # causal and windowed


# ---- gradcheck, float64, both backends ---------------------------------------------------
@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    with K.use(request.param):
        yield request.param


@settings(**SETTINGS)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), seeds)
def test_gradcheck_llama_ops(n, T, half, rep, seed):
    rng = np.random.default_rng(seed)
    hs = 2 * half
    cos, sin = _tables(T, hs, seed)
    window = 1 + seed % T
    for mode in ("numpy", "numba"):
        with K.use(mode):
            x, w = _t(rng.standard_normal((n, T, hs))), _t(rng.standard_normal(hs))
            gradcheck(lambda x, w: F.rms_norm(x, w, eps=1e-5), [x, w])
            g, u = _t(rng.standard_normal((n, hs)) * 2), _t(rng.standard_normal((n, hs)))
            gradcheck(F.swiglu, [g, u])
            gradcheck(lambda x: F.rope(x, cos, sin), [x])
            kv = _t(rng.standard_normal((1, n, T, hs)))
            gradcheck(lambda kv: F.repeat_kv(kv, rep), [kv])
            q, k, v = (_t(rng.standard_normal((1, 2, T, hs))) for _ in range(3))
            gradcheck(
                lambda q, k, v: F.scaled_dot_product_attention(q, k, v, window=window), [q, k, v]
            )
            # the same from the linears' outputs (heads side by side), RoPE and grouped
            # heads inside the kernel, with and without dropout on the probabilities
            q = _t(rng.standard_normal((n, T, 2 * rep * hs)))
            k, v = (_t(rng.standard_normal((n, T, 2 * hs))) for _ in range(2))
            for p in (0.0, 0.3):

                def heads(q, k, v, p=p):
                    rng = np.random.default_rng(7)  # the same draws every call
                    return F.attention_heads(q, k, v, 2 * rep, 2, (cos, sin), window, p, rng)

                gradcheck(heads, [q, k, v])


# ---- PyTorch parity, forward and backward ------------------------------------------------
def _torch_rope(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_llama_ops_match_torch_forward_and_backward(dtype, backend):
    rng = np.random.default_rng(3)
    B, nh, nkv, T, hs = 2, 4, 2, 7, 8
    x = rng.standard_normal((B, T, nh * hs)).astype(dtype)
    w = rng.standard_normal(nh * hs).astype(dtype)
    q = rng.standard_normal((B, nh, T, hs)).astype(dtype)
    k, v = rng.standard_normal((2, B, nkv, T, hs)).astype(dtype)
    gate, up = rng.standard_normal((2, B, T, 12)).astype(dtype) * 3
    cos, sin = _tables(T, hs, 0)
    window = 3

    ours = {n: _t(a) for n, a in dict(x=x, w=w, q=q, k=k, v=v, gate=gate, up=up).items()}
    theirs = {
        n: torch.tensor(a, requires_grad=True)
        for n, a in dict(x=x, w=w, q=q, k=k, v=v, gate=gate, up=up).items()
    }

    def ours_fn(o):
        n = F.rms_norm(o["x"], o["w"], eps=1e-5)
        qr, kr = F.rope(o["q"], cos, sin), F.rope(o["k"], cos, sin)
        kr, vr = F.repeat_kv(kr, nh // nkv), F.repeat_kv(o["v"], nh // nkv)
        a = F.scaled_dot_product_attention(qr, kr, vr, window=window)
        # the same attention from the heads side by side (as the linears write them)
        side = [o[name].transpose(0, 2, 1, 3).reshape(B, T, -1) for name in "qkv"]
        a2 = F.attention_heads(*side, nh, nkv, (cos, sin), window)
        return n, a, F.swiglu(o["gate"], o["up"]), a2

    def theirs_fn(t):
        xt = t["x"]
        n = xt * torch.rsqrt((xt * xt).mean(-1, keepdim=True) + 1e-5) * t["w"]
        c, s = torch.tensor(cos, dtype=xt.dtype), torch.tensor(sin, dtype=xt.dtype)
        qr, kr = _torch_rope(t["q"], c, s), _torch_rope(t["k"], c, s)
        kr = kr.repeat_interleave(nh // nkv, dim=1)
        vr = t["v"].repeat_interleave(nh // nkv, dim=1)
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        mask = (j <= i) & (j > i - window)
        a = torch.nn.functional.scaled_dot_product_attention(qr, kr, vr, attn_mask=mask)
        a2 = a.transpose(1, 2).reshape(B, T, nh * hs)
        return n, a, torch.nn.functional.silu(t["gate"]) * t["up"], a2

    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    outs, refs = ours_fn(ours), theirs_fn(theirs)
    r = np.random.default_rng(4)
    total_o, total_t = None, None
    for o, t in zip(outs, refs):
        np.testing.assert_allclose(o.data, t.detach().numpy(), **tol)
        weights = r.standard_normal(o.shape).astype(dtype)
        so, st_ = (o * Tensor(weights)).sum(), (t * torch.tensor(weights)).sum()
        total_o = so if total_o is None else total_o + so
        total_t = st_ if total_t is None else total_t + st_
    total_o.backward()
    total_t.backward()
    for name in ours:
        np.testing.assert_allclose(ours[name].grad, theirs[name].grad.numpy(), err_msg=name, **tol)
