"""clip_grad_norm against torch.nn.utils.clip_grad_norm_, and cosine_lr's shape."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from npllm import Tensor
from npllm.errors import ConfigError
from npllm.optim import clip_grad_norm, cosine_lr

TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(scale, dtype):
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (5,), (2, 2, 2)]
    grads = [(rng.standard_normal(s) * scale).astype(dtype) for s in shapes]
    ours = [Tensor(np.zeros(s, dtype), requires_grad=True) for s in shapes]
    theirs = [torch.zeros(s, dtype=TORCH_DTYPES[dtype]) for s in shapes]
    for p, q, g in zip(ours, theirs, grads):
        p.grad = g.copy()
        q.grad = torch.tensor(g.copy())
    skipped = Tensor(np.zeros(3, dtype), requires_grad=True)  # no grad: ignored
    total = clip_grad_norm([*ours, skipped], max_norm=1.0)
    ref = torch.nn.utils.clip_grad_norm_(theirs, max_norm=1.0)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert math.isclose(total, float(ref), rel_tol=tol)
    for p, q in zip(ours, theirs):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=tol, atol=0)
    assert skipped.grad is None
    after = math.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for p in ours))
    assert after <= 1.0 + 1e-5


def test_clip_grad_norm_without_grads_is_zero():
    assert clip_grad_norm([Tensor(np.zeros(2), requires_grad=True)], 1.0) == 0.0


LR, MIN_LR, WARMUP, DECAY = 6e-4, 6e-5, 10, 110


def test_cosine_lr_warms_up_linearly_to_lr():
    lrs = [cosine_lr(it, LR, WARMUP, DECAY, MIN_LR) for it in range(WARMUP + 1)]
    steps = np.diff(lrs)
    assert np.all(steps > 0)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)  # linear
    assert lrs[-1] == pytest.approx(LR)  # warmup ends at the peak


def test_cosine_lr_decays_monotonically_to_min_lr():
    lrs = [cosine_lr(it, LR, WARMUP, DECAY, MIN_LR) for it in range(WARMUP, DECAY + 20)]
    assert np.all(np.diff(lrs) <= 0)
    mid = cosine_lr((WARMUP + DECAY) // 2, LR, WARMUP, DECAY, MIN_LR)
    assert mid == pytest.approx((LR + MIN_LR) / 2)  # cosine's half-way point
    assert lrs[DECAY - WARMUP] == pytest.approx(MIN_LR)
    assert lrs[-1] == MIN_LR


def test_cosine_lr_edge_cases():
    assert cosine_lr(0, LR, 0, 100, MIN_LR) == pytest.approx(LR)  # no warmup
    assert cosine_lr(5, LR, 5, 5, MIN_LR) == MIN_LR  # no decay phase
    with pytest.raises(ConfigError):
        cosine_lr(0, LR, 10, 5, MIN_LR)
