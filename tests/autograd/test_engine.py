"""The engine: accumulation, topological order on shared subgraphs, no_grad, detach,
deep graphs, freed graphs and the errors a user can cause."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import NpllmError, Tensor, no_grad
from npllm.autograd import Function, gradcheck, is_grad_enabled
from npllm.errors import GradError, ShapeError


def p(a) -> Tensor:
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def test_gradient_accumulates_when_a_tensor_is_used_twice():
    x = p([1.0, 2.0, 3.0])
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fresh_gradients_added_in_place_leave_shared_ones_alone(backend):
    """x feeds an Add, whose backward hands the same array to both its inputs, and a
    Linear, whose gradients are new arrays (`fresh_grads`) that the engine may add into
    in place or give to a leaf as they are: every leaf still gets its own right gradient,
    and a second backward accumulates into them."""
    import npllm.functional as F
    from npllm import kernels

    rng = np.random.default_rng(0)
    x, b, w = p(rng.standard_normal((3, 4))), p(rng.standard_normal((3, 4))), p(np.eye(4) * 2)
    g = rng.standard_normal((3, 4))
    with kernels.use(backend):
        for k in (1, 2):
            y = (x + b) + F.linear(x, w) + F.linear(b, w)
            y.backward(g)
            np.testing.assert_allclose(x.grad, k * (g + g @ w.data), rtol=1e-12)
            np.testing.assert_allclose(b.grad, k * (g + g @ w.data), rtol=1e-12)
            np.testing.assert_allclose(w.grad, k * (g.T @ x.data + g.T @ b.data), rtol=1e-12)
    assert x.grad is not b.grad


def test_backward_twice_accumulates_into_grad():
    x = p([1.0, -2.0])
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, [6.0, 6.0])


def test_diamond_graph_is_walked_in_topological_order():
    # y feeds z directly and through w: z must receive both contributions before y's backward
    x = p([0.5, -1.5])
    y = x.tanh()
    w = y * 2
    z = (y + w) * y
    assert gradcheck(lambda t: (t.tanh() + t.tanh() * 2) * t.tanh(), [x])
    z.sum().backward()
    t = np.tanh(x.data)
    np.testing.assert_allclose(x.grad, 6 * t * (1 - t**2))


def test_deep_graph_does_not_hit_recursion_limit():
    x = p([1.0])
    y = x
    for _ in range(20000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0])


def test_no_grad_records_nothing_and_restores():
    x = p([1.0, 2.0])
    with no_grad():
        assert not is_grad_enabled()
        y = x * 2
    assert is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(GradError, match="does not require grad"):
        y.sum().backward()

    @no_grad()
    def double(t):
        return t * 2

    assert not double(x).requires_grad
    assert is_grad_enabled()


def test_detach_cuts_the_graph():
    x = p([1.0, 2.0])
    y = x * 3
    d = y.detach()
    assert not d.requires_grad and d.is_leaf
    np.testing.assert_array_equal(d.data, y.data)
    (y + d).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 3.0])


def test_only_inputs_that_require_grad_get_grads():
    x = p([1.0, 2.0])
    c = Tensor(np.array([3.0, 4.0]))
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_allclose(x.grad, [3.0, 4.0])


def test_backward_on_non_scalar_without_grad_names_the_shape():
    x = p(np.ones((2, 3)))
    with pytest.raises(GradError, match=r"\(2, 3\)"):
        (x * 2).backward()


def test_backward_with_explicit_gradient():
    x = p(np.ones((2, 3)))
    (x * 2).backward(np.full((2, 3), 0.5))
    np.testing.assert_allclose(x.grad, np.ones((2, 3)))
    with pytest.raises(ShapeError, match=r"\(3,\).*\(2, 3\)"):
        (x * 2).backward(np.ones(3))


def test_mismatched_shapes_name_both_shapes():
    a, b = p(np.ones((2, 3))), p(np.ones((4,)))
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(4,\)"):
        a + b
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(4,\)"):
        a * b
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(2, 3\)"):
        a @ p(np.ones((2, 3)))
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(5,\)"):
        a.reshape(5)
    with pytest.raises(ShapeError, match="axis 2"):
        a.sum(axis=2)
    assert issubclass(ShapeError, NpllmError)


def test_freed_graph_gives_clear_error_and_retain_graph_allows_second_pass():
    x = p([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)
    with pytest.raises(GradError, match="retain_graph"):
        y.backward()


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(GradError, match="floating"):
        Tensor(np.arange(3), requires_grad=True)


def test_item_and_numpy():
    x = Tensor(np.array([[2.5]]))
    assert x.item() == 2.5
    assert x.numpy() is x.data
    with pytest.raises(ShapeError, match="one element"):
        Tensor(np.ones(2)).item()


def test_shared_gradient_arrays_are_never_added_into_in_place():
    # Add's backward hands the same array to both inputs; accumulating into it in place
    # would leak u's second contribution into w's gradient.
    x, w = p([1.0, 2.0]), p([3.0, 4.0])
    u = x * 2
    v = u + w
    out = v + u
    out.backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(w.grad, [1.0, 10.0])
    np.testing.assert_array_equal(x.grad, [4.0, 40.0])
    out2 = (w + w) + w  # three contributions to one leaf
    w.grad = None
    out2.sum().backward()
    np.testing.assert_array_equal(w.grad, [3.0, 3.0])


def test_retain_grads_keeps_every_intermediate_gradient():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    h = x * 2.0
    y = h * 3.0 + h * h
    loss = y.sum()
    loss.backward(retain_grads=True)
    np.testing.assert_allclose(loss.grad, 1.0)
    np.testing.assert_allclose(y.grad, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(h.grad, 3.0 + 2 * h.data)  # d(3h + h^2)/dh
    np.testing.assert_allclose(x.grad, 2 * (3.0 + 2 * h.data))
    h.grad[0] = 99.0  # a copy of its own: the leaf's gradient is untouched
    np.testing.assert_allclose(x.grad, 2 * (3.0 + 2 * h.data))


def test_without_retain_grads_intermediates_have_no_grad():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * x
    h.sum().backward()
    assert h.grad is None and x.grad is not None


def test_apply_takes_none_for_an_optional_input():
    # forward sees None in that slot, backward's gradient for it is dropped, and the
    # walk skips it (no *args or has_b flags needed for an optional operand)
    class AddMaybe(Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.has_b = b is not None
            return a + b if b is not None else a * 1.0

        @staticmethod
        def backward(ctx, g):
            # out = a + b  =>  da = g, db = g
            return g, g

    x, y = p([1.0, 2.0]), p([3.0, 4.0])
    out = AddMaybe.apply(x, None)
    out.sum().backward()
    np.testing.assert_array_equal(out.data, [1.0, 2.0])
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])
    x.grad = None
    AddMaybe.apply(x, y).sum().backward()
    np.testing.assert_array_equal(y.grad, [1.0, 1.0])
    with no_grad():
        assert not AddMaybe.apply(x, None).requires_grad
    assert not AddMaybe.apply(Tensor([1.0]), None).requires_grad
