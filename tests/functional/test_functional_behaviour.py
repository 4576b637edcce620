"""What the F ops promise beyond their gradients: dtype kept, non-contiguous inputs, T=1,
the KV-cache attention alignment, ignore_index, dropout's RNG and scaling, user errors."""

from __future__ import annotations

import numpy as np
import pytest

import npllm.functional as F
from npllm import Tensor
from npllm import kernels as K
from npllm.errors import ConfigError, NpllmError, ShapeError


@pytest.fixture(params=["numpy", "numba"], autouse=True)
def backend(request):
    with K.use(request.param):
        yield request.param


def tensor(rng, *shape, dtype=np.float32, grad=True):
    return Tensor(rng.standard_normal(shape).astype(dtype), requires_grad=grad)


def ops(rng, dtype):
    """(name, fn, inputs) for every op, at odd sizes with T=1 somewhere."""
    idx = rng.integers(0, 7, size=(2, 1))
    tg = rng.integers(0, 5, size=(3, 1))
    return [
        (
            "linear",
            F.linear,
            [
                tensor(rng, 3, 1, 5, dtype=dtype),
                tensor(rng, 7, 5, dtype=dtype),
                tensor(rng, 7, dtype=dtype),
            ],
        ),
        ("relu", F.relu, [tensor(rng, 3, 5, dtype=dtype)]),
        ("gelu", F.gelu, [tensor(rng, 3, 5, dtype=dtype)]),
        ("gelu_exact", lambda x: F.gelu(x, "none"), [tensor(rng, 3, 5, dtype=dtype)]),
        ("softmax", F.softmax, [tensor(rng, 3, 1, 5, dtype=dtype)]),
        ("log_softmax", F.log_softmax, [tensor(rng, 3, 5, dtype=dtype)]),
        (
            "layer_norm",
            F.layer_norm,
            [
                tensor(rng, 3, 1, 5, dtype=dtype),
                tensor(rng, 5, dtype=dtype),
                tensor(rng, 5, dtype=dtype),
            ],
        ),
        ("embedding", lambda w: F.embedding(idx, w), [tensor(rng, 7, 3, dtype=dtype)]),
        ("cross_entropy", lambda x: F.cross_entropy(x, tg), [tensor(rng, 3, 1, 5, dtype=dtype)]),
        (
            "sdpa",
            F.scaled_dot_product_attention,
            [tensor(rng, 1, 3, 1, 5, dtype=dtype) for _ in range(3)],
        ),
        (
            "dropout",
            lambda x: F.dropout(x, 0.5, True, np.random.default_rng(0)),
            [tensor(rng, 3, 5, dtype=dtype)],
        ),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_in_outputs_and_gradients(dtype):
    for name, fn, inputs in ops(np.random.default_rng(0), dtype):
        out = fn(*inputs)
        assert out.dtype == dtype, name
        (out * out).sum().backward()
        for x in inputs:
            assert x.grad is not None and x.grad.dtype == dtype, name
            assert x.grad.shape == x.shape, name


def _noncontig(a: np.ndarray) -> np.ndarray:
    """The same values as `a` in a non-contiguous (transposed-then-back) layout."""
    big = np.empty(a.shape[::-1] + (2,), dtype=a.dtype)
    view = big[..., 0].transpose()
    view[...] = a
    assert not view.flags.c_contiguous or a.ndim < 2
    return view


def test_non_contiguous_inputs_give_the_same_results():
    rng = np.random.default_rng(1)
    for name, fn, inputs in ops(rng, np.float32):
        if inputs[0].ndim < 2:
            continue
        contiguous = fn(*inputs)
        g = rng.standard_normal(contiguous.shape).astype(np.float32)
        contiguous.backward(g)
        grads = [x.grad.copy() for x in inputs]
        strided = [Tensor(_noncontig(x.data), requires_grad=True) for x in inputs]
        out = fn(*strided)
        out.backward(_noncontig(g) if g.ndim >= 2 else g)
        np.testing.assert_allclose(out.data, contiguous.data, rtol=1e-6, atol=1e-6, err_msg=name)
        for a, b in zip(strided, grads):
            np.testing.assert_allclose(a.grad, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_attention_one_query_over_a_cache_equals_the_last_row():
    """The KV-cache decoder's call (Tq=1 over Tk keys) sees every key, as the last row of
    full causal attention does."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 3, 6, 4)).astype(np.float32) for _ in range(3))
    full = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).data
    for tq in (1, 2):
        part = F.scaled_dot_product_attention(Tensor(q[:, :, -tq:]), Tensor(k), Tensor(v)).data
        np.testing.assert_allclose(part, full[:, :, -tq:], rtol=1e-5, atol=1e-6)


def test_attention_is_causal():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 5, 4)) for _ in range(3))
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).data
    v2 = v.copy()
    v2[:, :, 3:] += 10.0  # future values must not change earlier outputs
    out2 = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v2)).data
    np.testing.assert_allclose(out[:, :, :3], out2[:, :, :3])
    assert not np.allclose(out[:, :, 3:], out2[:, :, 3:])


def test_cross_entropy_ignores_targets_and_all_ignored_gives_zero():
    rng = np.random.default_rng(4)
    logits = tensor(rng, 4, 6, dtype=np.float64)
    tg = np.array([1, -1, 5, -1])
    loss = F.cross_entropy(logits, tg)
    kept = F.cross_entropy(Tensor(logits.data[[0, 2]]), tg[[0, 2]])
    np.testing.assert_allclose(loss.data, kept.data)
    loss.backward()
    assert np.all(logits.grad[[1, 3]] == 0)

    logits.grad = None
    none = F.cross_entropy(logits, np.full(4, -1))
    assert none.item() == 0.0 and np.isfinite(none.item())
    none.backward()
    assert np.all(logits.grad == 0)


def test_cross_entropy_is_stable_on_huge_logits():
    logits = Tensor(
        np.array([[1e4, 0.0, -1e4], [3e4, 3e4, 0.0]], dtype=np.float32), requires_grad=True
    )
    loss = F.cross_entropy(logits, np.array([0, 1]))
    # lse of the second row is 3e4 + log 2, stored in float32 (ulp 2e-3 at 3e4)
    np.testing.assert_allclose(loss.item(), np.log(2) / 2, atol=2e-3)
    loss.backward()
    assert np.all(np.isfinite(logits.grad))


def test_dropout_identity_scaling_and_rng():
    x = Tensor(np.ones((200, 50), dtype=np.float32), requires_grad=True)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0, training=True) is x
    a = F.dropout(x, 0.25, True, np.random.default_rng(7)).data
    b = F.dropout(x, 0.25, True, np.random.default_rng(7)).data
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.02
    dropped = F.dropout(x, 1.0, True)
    assert np.all(dropped.data == 0)
    with pytest.raises(ConfigError):
        F.dropout(x, 1.5, True)


def test_user_errors_name_the_problem():
    rng = np.random.default_rng(5)
    w = tensor(rng, 5, 3)
    with pytest.raises(ShapeError, match=r"id 5 .*V=5"):
        F.embedding(np.array([0, 5]), w)
    with pytest.raises(ShapeError, match=r"id -2 .*V=5"):
        F.embedding(np.array([-2]), w)
    with pytest.raises(ShapeError, match="integers"):
        F.embedding(np.array([0.5]), w)
    with pytest.raises(ShapeError, match="target 9"):
        F.cross_entropy(tensor(rng, 2, 4), np.array([1, 9]))
    with pytest.raises(ShapeError):
        F.cross_entropy(tensor(rng, 2, 4), np.array([1, 2, 3]))
    with pytest.raises(ShapeError, match="in_features"):
        F.linear(tensor(rng, 2, 4), w)
    with pytest.raises(ShapeError, match="layer_norm"):
        F.layer_norm(tensor(rng, 2, 4), tensor(rng, 3), None)
    with pytest.raises(ShapeError, match="Tq <= Tk"):
        F.scaled_dot_product_attention(
            tensor(rng, 1, 1, 3, 2), tensor(rng, 1, 1, 2, 2), tensor(rng, 1, 1, 2, 2)
        )
    with pytest.raises(ConfigError):
        F.gelu(w, approximate="fast")
    with pytest.raises(NpllmError):
        K.use("cuda")


def test_embedding_accepts_int_tensors_and_any_shape():
    rng = np.random.default_rng(6)
    w = tensor(rng, 9, 4)
    idx = rng.integers(0, 9, size=(2, 3, 2))
    out = F.embedding(Tensor(idx), w)
    assert out.shape == (2, 3, 2, 4)
    np.testing.assert_array_equal(out.data, w.data[idx])


def test_no_graph_without_grad():
    rng = np.random.default_rng(8)
    x = tensor(rng, 2, 3, grad=False)
    assert not F.softmax(x).requires_grad
    assert not F.linear(x, tensor(rng, 4, 3, grad=False)).requires_grad
