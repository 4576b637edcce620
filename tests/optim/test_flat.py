"""AdamW's one-call path (flat gradient and moment buffers, optim/adamw.py `_OneCall`),
the gradient homes the engine writes into (optim/flat.py), and clipping over the flat
buffer: the same numbers as one call a parameter, and back to that path whenever the
flat layout no longer holds."""

from __future__ import annotations

import numpy as np
import pytest

from npllm import Tensor, kernels
from npllm.gpt import GPT, GPTConfig
from npllm.optim import AdamW, clip_grad_norm
from npllm.optim.flat import FlatGrads, buffer_of

SHAPES = [(6, 4), (4,), (3, 2, 5), (1,), (0,)]


def _params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in SHAPES]


def _groups(ps):
    return [{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "weight_decay": 0.0}]


def _per_parameter(opt):
    """`opt` with its one-call path switched off: one kernel call a parameter."""
    opt._step_one_call = lambda: False
    return opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_call_gives_the_bits_of_one_call_a_parameter(dtype):
    a, b = _params(dtype=dtype), _params(dtype=dtype)
    fast = AdamW(_groups(a), lr=1e-2, betas=(0.9, 0.95))
    slow = _per_parameter(AdamW(_groups(b), lr=1e-2, betas=(0.9, 0.95)))
    rng = np.random.default_rng(1)
    for step in range(12):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in a]
        missing = 3 if step == 5 else None  # a step where one parameter has no gradient
        for i, (p, q, g) in enumerate(zip(a, b, grads)):
            p.grad = None if i == missing else g.copy()
            q.grad = None if i == missing else g.copy()
        if step == 8:
            for g in fast.param_groups + slow.param_groups:
                g["lr"] = 3e-3
        fast.step()
        slow.step()
        if step < 5:
            assert fast._one_call.entries[0]["step"] == step + 1 == fast.state[id(a[0])]["step"]
        elif step > 5:  # parameter 3 is a step behind from now on: one call a parameter
            assert fast._one_call is None
        for p, q in zip(a, b):
            np.testing.assert_array_equal(p.data, q.data)
    for p, q in zip(a, b):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(fast.state[id(p)][key], slow.state[id(q)][key])


def test_grads_land_in_the_flat_buffer_and_the_state_survives_a_round_trip():
    ps = _params()
    opt = AdamW(_groups(ps), lr=1e-2)
    for p in ps:
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    plan = opt._one_call
    assert all(p.grad is p.grad_home for p in ps)
    assert buffer_of([p.grad for p in ps]) is plan.grads.buffer
    # a backward after zero_grad writes into the homes, no new arrays
    opt.zero_grad()
    loss = sum((p * p).sum() for p in ps)
    loss.backward()
    for p in ps:
        assert p.grad is p.grad_home
        np.testing.assert_allclose(p.grad, 2 * p.data, rtol=1e-6)
    # state_dict's arrays are the live views; loading a copy rebuilds the plan from it
    saved = {
        "state": {
            k: {n: (v.copy() if isinstance(v, np.ndarray) else v) for n, v in s.items()}
            for k, s in opt.state_dict()["state"].items()
        },
        "param_groups": opt.state_dict()["param_groups"],
    }
    twin_params = [Tensor(p.data.copy(), requires_grad=True) for p in ps]
    twin = AdamW(_groups(twin_params), lr=1e-2)
    twin.load_state_dict(saved)
    for p, q in zip(ps, twin_params):
        q.grad = p.grad.copy()
    opt.step()
    twin.step()
    assert twin._one_call is not None
    for p, q in zip(ps, twin_params):
        np.testing.assert_array_equal(p.data, q.data)


def test_a_parameter_array_replaced_is_followed():
    ps = _params()
    opt = AdamW(_groups(ps), lr=1e-2)
    ref = _per_parameter(AdamW(_groups(qs := _params()), lr=1e-2))
    for step in range(3):
        for p, q in zip(ps, qs):
            p.grad = np.full(p.shape, 0.5, np.float32)
            q.grad = np.full(q.shape, 0.5, np.float32)
        if step == 1:  # as Module.to() does: new arrays, same values
            for p, q in zip(ps, qs):
                p.data = p.data.copy()
                q.data = q.data.copy()
        opt.step()
        ref.step()
        for p, q in zip(ps, qs):
            np.testing.assert_array_equal(p.data, q.data)
    assert opt._one_call.spans[0].holds([p.data for p in ps[:2]])


def test_mixed_dtypes_stay_on_one_call_a_parameter():
    ps = _params()
    ps[1] = Tensor(ps[1].data.astype(np.float64), requires_grad=True)
    opt = AdamW(_groups(ps), lr=1e-2)
    for p in ps:
        p.grad = np.ones(p.shape, p.dtype)
    opt.step()
    assert opt._one_call is None and all(p.grad_home is None for p in ps)
    assert opt.state[id(ps[1])]["step"] == 1


def _gpt_grads(homes: bool):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg, seed=3)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    x = np.arange(16).reshape(2, 8) % 11
    if homes:  # a first step makes the flat buffer
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        model.load_state_dict(GPT(cfg, seed=3).state_dict())
    opt.zero_grad()
    _, loss = model(x, x)
    loss.backward()
    return model


def test_backward_into_homes_gives_the_same_gradients_tied_weights_included():
    plain, flat = _gpt_grads(False), _gpt_grads(True)
    for (name, p), q in zip(plain.named_parameters(), flat.parameters()):
        assert q.grad is q.grad_home, name
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
    # the tied embedding / lm_head weight got both contributions in its home
    assert flat.lm_head.weight is flat.transformer.wte.weight


def test_linear_backward_writes_the_weight_gradient_where_asked():
    rng = np.random.default_rng(0)
    dout, x, w = (rng.standard_normal(s).astype(np.float32) for s in [(9, 4), (9, 3), (4, 3)])
    for backend in ("numba", "numpy"):
        home = np.full((4, 3), np.nan, np.float32)
        dx, dw, db = kernels.get("linear_backward", backend)(dout, x, w, dw_out=home)
        assert dw is home
        np.testing.assert_allclose(dw, dout.T @ x, rtol=1e-5, atol=1e-6)
        wrong = np.zeros((3, 4), np.float32)  # a misfit is ignored, not written
        _, dw2, _ = kernels.get("linear_backward", backend)(dout, x, w, dw_out=wrong)
        assert dw2 is not wrong and not wrong.any()


def test_clip_over_the_flat_buffer_matches_clipping_each_array():
    ps, qs = _params(), _params()
    flat = FlatGrads(ps, np.float32)
    rng = np.random.default_rng(2)
    for p, q, home in zip(ps, qs, flat.homes):
        g = rng.standard_normal(p.shape).astype(np.float32) * 3
        home[...] = g
        p.grad = home
        q.grad = g.copy()
    assert buffer_of([p.grad for p in ps]) is flat.buffer
    assert buffer_of([p.grad for p in ps[:-1]]) is None  # not all of it
    assert buffer_of([q.grad for q in qs]) is None
    n1, n2 = clip_grad_norm(ps, 1.0), clip_grad_norm(qs, 1.0)
    assert n1 == pytest.approx(n2, rel=1e-12) and n1 > 1.0
    for p, q in zip(ps, qs):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-6)
    assert clip_grad_norm(ps, 1.0) == pytest.approx(1.0, rel=1e-5)
