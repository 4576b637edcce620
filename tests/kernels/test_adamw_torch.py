"""The fused AdamW kernel reproduces torch.optim.AdamW step by step (both backends)."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import kernels as K
from npllm.errors import ShapeError

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch_over_steps(backend, weight_decay):
    rng = np.random.default_rng(0)
    p = rng.standard_normal((37, 5)).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    tp = torch.tensor(p.copy(), requires_grad=True)
    opt = torch.optim.AdamW(
        [tp], lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay, foreach=False
    )
    for step in range(1, 8):
        g = rng.standard_normal(p.shape).astype(np.float32)
        K.get("adamw_update", backend)(p, g, m, v, 3e-3, 0.9, 0.95, 1e-8, weight_decay, step)
        tp.grad = torch.tensor(g)
        opt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-7)
    state = opt.state[tp]
    np.testing.assert_allclose(m, state["exp_avg"].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v, state["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-9)


def test_adamw_refuses_views_it_cannot_update_in_place():
    p = np.zeros((4, 6), np.float32)
    with pytest.raises(ShapeError, match="C-contiguous"):
        K.adamw_update(
            p[:, ::2],
            np.zeros((4, 3), np.float32),
            np.zeros((4, 3), np.float32),
            np.zeros((4, 3), np.float32),
            1e-3,
            0.9,
            0.999,
            1e-8,
            0.0,
            1,
        )
    with pytest.raises(ShapeError, match="dtype"):
        K.adamw_update(p, p.astype(np.float64), p.copy(), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 0, 1)
