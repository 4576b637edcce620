"""AdamW and SGD against torch.optim on random parameters and gradients, param groups,
skipped parameters, state-dict round trips, and bad hyperparameters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from npllm import Tensor, kernels
from npllm.errors import CheckpointError, ConfigError
from npllm.optim import SGD, AdamW

SHAPES = [(5, 3), (7,), (2, 3, 4), (1,)]


def _pair(rng, dtype):
    """The same random parameters as npllm Tensors and torch leaf tensors."""
    arrays = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    return ours, theirs


def _set_grads(rng, ours, theirs, dtype):
    for p, q in zip(ours, theirs):
        g = (rng.standard_normal(p.shape) * rng.uniform(0.1, 3.0)).astype(dtype)
        p.grad = g.copy()
        q.grad = torch.tensor(g.copy())


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_matches_torch_for_100_steps_with_groups(dtype, backend):
    with kernels.use(backend):
        _adamw_vs_torch(dtype)


def _adamw_vs_torch(dtype):
    # float32: within 1e-6, absolute plus relative. The fused Numba update rounds a little
    # differently from torch (fastmath "arcp"/"contract": reciprocal-multiply and FMA), an
    # ulp here and there, and over 100 steps that reaches ~1.2e-6 on parameters near 1.3.
    tol = 1e-6 if dtype == np.float32 else 1e-12
    rng = np.random.default_rng(0)
    ours, theirs = _pair(rng, dtype)
    hp = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    opt = AdamW(
        [{"params": ours[:2], "weight_decay": 0.1}, {"params": ours[2:], "weight_decay": 0.0}],
        **hp,
    )
    ref = torch.optim.AdamW(
        [{"params": theirs[:2], "weight_decay": 0.1}, {"params": theirs[2:], "weight_decay": 0.0}],
        **hp,
    )
    for step in range(100):
        _set_grads(rng, ours, theirs, dtype)
        if step == 50:  # a schedule changes the groups' lr
            for g in opt.param_groups + ref.param_groups:
                g["lr"] = 1e-3
        opt.step()
        ref.step()
        for p, q in zip(ours, theirs):
            assert p.dtype == dtype and opt.state[id(p)]["exp_avg"].dtype == dtype
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=tol, atol=tol)
    # the decayed group really decayed: a zero-gradient step moves only decayed params
    before = [p.data.copy() for p in ours]
    for p in ours:
        p.grad = np.zeros_like(p.data)
    for s in opt.state.values():
        s["exp_avg"][...] = 0
    opt.step()
    assert not np.array_equal(before[0], ours[0].data)
    np.testing.assert_array_equal(before[2], ours[2].data)


def test_adamw_default_hyperparameters_match_torch():
    rng = np.random.default_rng(1)
    ours, theirs = _pair(rng, np.float64)
    opt, ref = AdamW(ours, lr=1e-2), torch.optim.AdamW(theirs, lr=1e-2)
    for _ in range(5):
        _set_grads(rng, ours, theirs, np.float64)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_parameters_without_grad_are_skipped_and_keep_no_state():
    rng = np.random.default_rng(2)
    ours, _ = _pair(rng, np.float32)
    before = ours[1].data.copy()
    ours[0].grad = np.ones_like(ours[0].data)
    for opt in (AdamW(ours, lr=0.1), SGD(ours, lr=0.1, momentum=0.9)):
        opt.step()
        np.testing.assert_array_equal(ours[1].data, before)
        assert id(ours[1]) not in opt.state


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.05), (0, 0.1)])
def test_sgd_matches_torch(momentum, weight_decay):
    rng = np.random.default_rng(3)
    ours, theirs = _pair(rng, np.float64)
    opt = SGD(ours, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    ref = torch.optim.SGD(theirs, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    for _ in range(20):
        _set_grads(rng, ours, theirs, np.float64)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_zero_grad_drops_gradients():
    rng = np.random.default_rng(4)
    ours, theirs = _pair(rng, np.float32)
    _set_grads(rng, ours, theirs, np.float32)
    opt = AdamW(ours)
    opt.zero_grad()
    assert all(p.grad is None for p in ours)


def _json_and_arrays(sd):
    """Split a state dict as a checkpoint would: arrays apart, the rest through JSON."""
    arrays = {}
    state = {}
    for i, s in sd["state"].items():
        state[i] = {}
        for k, v in s.items():
            if isinstance(v, np.ndarray):
                arrays[f"{i}.{k}"] = v.copy()
            else:
                state[i][k] = v
    meta = json.loads(json.dumps({"state": state, "param_groups": sd["param_groups"]}))
    for key, arr in arrays.items():
        i, k = key.split(".", 1)
        meta["state"][i][k] = arr
    return meta


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: AdamW([{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.0}], lr=1e-2),
        lambda ps: SGD(ps, lr=1e-2, momentum=0.9),
    ],
)
def test_state_dict_round_trip_through_json_continues_identically(make):
    rng = np.random.default_rng(5)
    a, _ = _pair(rng, np.float32)
    b = [Tensor(p.data.copy(), requires_grad=True) for p in a]
    opt_a = make(a)
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in a] for _ in range(6)]
    for gs in grads[:3]:
        for p, g in zip(a, gs):
            p.grad = g.copy()
        opt_a.step()
    for p, q in zip(a, b):
        q.data[...] = p.data
    sd = opt_a.state_dict()
    for s in sd["state"].values():
        for v in s.values():
            assert isinstance(v, (np.ndarray, int, float))
    opt_b = make(b)
    opt_b.param_groups[0]["lr"] = 123.0  # overwritten by the load
    opt_b.load_state_dict(_json_and_arrays(sd))
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    for gs in grads[3:]:
        for p, q, g in zip(a, b, gs):
            p.grad, q.grad = g.copy(), g.copy()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)


def test_load_state_dict_rejects_other_shapes_and_groups():
    rng = np.random.default_rng(6)
    a, _ = _pair(rng, np.float32)
    opt = AdamW(a)
    for p in a:
        p.grad = np.ones_like(p.data)
    opt.step()
    sd = opt.state_dict()
    other = [Tensor(np.zeros((4, 4), np.float32), requires_grad=True), *a[1:]]
    with pytest.raises(CheckpointError, match=r"\(5, 3\).*\(4, 4\)"):
        AdamW(other).load_state_dict(sd)
    with pytest.raises(CheckpointError, match="param groups"):
        AdamW([{"params": a[:1]}, {"params": a[1:]}]).load_state_dict(sd)
    with pytest.raises(CheckpointError, match="another optimizer"):
        SGD(a, lr=0.1, momentum=0.9).load_state_dict(sd)


@pytest.mark.parametrize("kwargs", [{"lr": -1.0}, {"betas": (1.0, 0.9)}, {"weight_decay": -0.1}])
def test_adamw_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ConfigError):
        AdamW([Tensor(np.zeros(2, np.float32), requires_grad=True)], **kwargs)


def test_optimizer_rejects_empty_and_duplicate_params():
    p = Tensor(np.zeros(2, np.float32), requires_grad=True)
    with pytest.raises(ConfigError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ConfigError, match="twice"):
        AdamW([{"params": [p]}, {"params": [p]}])
