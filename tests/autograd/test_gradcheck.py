"""gradcheck itself: it must catch a wrong backward and report the worst entry."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import Tensor
from npllm.autograd import Function, gradcheck
from npllm.errors import GradcheckError


class WrongSquare(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        wrong = 2 * a
        wrong[..., -1] *= 1.5  # one column off
        return g * wrong


def test_gradcheck_catches_a_wrong_backward_and_names_the_entry():
    x = Tensor(np.arange(1.0, 7.0).reshape(2, 3), requires_grad=True)
    with pytest.raises(GradcheckError, match=r"input 0 \(shape \(2, 3\)\) at index \(\d, 2\)"):
        gradcheck(lambda t: WrongSquare.apply(t), [x])


def test_gradcheck_passes_a_right_backward_and_runs_in_float64():
    x = Tensor(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    seen = []

    def fn(t):
        seen.append(t.dtype)
        return (t * t).sum(axis=0)

    assert gradcheck(fn, [x])
    assert set(seen) == {np.dtype(np.float64)}
    assert x.grad is None  # the caller's tensors are untouched


def test_gradcheck_on_a_tensor_that_does_not_reach_the_output():
    x = Tensor(np.ones(3), requires_grad=True)
    y = Tensor(np.ones(2), requires_grad=True)
    assert gradcheck(lambda a, b: a * 2, [x, y])
