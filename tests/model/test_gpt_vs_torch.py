"""The npllm GPT against an independent PyTorch GPT holding the same weights (loaded by
state-dict name): logits, loss and every parameter's gradient, in float32 and float64;
then ten AdamW training steps with gradient clipping, step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npllm.gpt import GPT, GPTConfig
from npllm.optim import clip_grad_norm
from tests.model.helpers import batch, perturbed, reference, tiny_config

VARIANTS = [
    dict(activation="gelu", bias=True),
    dict(activation="gelu_exact", bias=False, mlp_hidden=48),
    dict(activation="relu", bias=True, mlp_hidden=40, n_layer=3, n_head=4),
]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the reference's largest entry."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v["activation"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_loss_and_every_gradient_match_torch(variant, dtype):
    config = tiny_config(**variant)
    model = GPT(config, seed=0).to(dtype)
    perturbed(model, scale=0.05)  # off the init's special values (LN ones, zero biases)
    ref = reference(model, dtype)
    idx, targets = batch(config, B=3, ignore=5)

    logits, loss = model(idx, targets)
    loss.backward()
    ref_logits, ref_loss = ref(torch.tensor(idx), torch.tensor(targets))
    ref_loss.backward()

    assert logits.dtype == dtype and loss.dtype == dtype
    assert logits.shape == (3, config.block_size, config.vocab_size)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(logits.data, ref_logits.detach().numpy(), rtol=0, atol=tol)
    assert abs(loss.item() - ref_loss.item()) <= tol

    ref_params = dict(ref.named_parameters())
    grad_tol = 1e-4 if dtype == np.float32 else 1e-10
    names = [n for n, _ in model.named_parameters()]
    assert sorted(names) == sorted(ref_params)  # the tied weight once on both sides
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype, name
        assert _rel(p.grad, ref_params[name].grad.numpy()) <= grad_tol, name


def test_shorter_sequences_and_no_targets_match_torch():
    config = tiny_config()
    model = perturbed(GPT(config, seed=3), scale=0.05)
    ref = reference(model)
    idx, _ = batch(config, B=2, T=5, seed=4)
    logits, loss = model(idx)
    assert loss is None and logits.shape == (2, 5, config.vocab_size)
    ref_logits, _ = ref(torch.tensor(idx))
    np.testing.assert_allclose(logits.data, ref_logits.detach().numpy(), rtol=0, atol=1e-5)


def test_ten_adamw_steps_with_clipping_match_torch():
    config = tiny_config()
    model = GPT(config, seed=0)
    ref = reference(model)
    idx, targets = batch(config, B=3, seed=5)
    lr, wd, betas = 1e-3, 0.1, (0.9, 0.95)

    opt = model.configure_optimizers(weight_decay=wd, learning_rate=lr, betas=betas)
    params = list(ref.parameters())
    ref_opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=betas,
    )
    ti, tt = torch.tensor(idx), torch.tensor(targets)
    for step in range(10):
        _, loss = model(idx, targets)
        model.zero_grad()
        loss.backward()
        norm = clip_grad_norm(model.parameters(), 1.0)
        opt.step()

        _, ref_loss = ref(ti, tt)
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()

        assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()), step
        assert abs(norm - float(ref_norm)) <= 1e-4 * float(ref_norm), step
    assert loss.item() < batch_loss_at_init(config, idx, targets)  # it did learn
    ref_sd = ref.state_dict()
    for name, arr in model.state_dict().items():
        np.testing.assert_allclose(arr, ref_sd[name].numpy(), rtol=0, atol=1e-4, err_msg=name)


def batch_loss_at_init(config, idx, targets) -> float:
    return GPT(config, seed=0)(idx, targets)[1].item()


@st.composite
def configs_and_batches(draw):
    """Small configs of every kind (one head, head size 1, T below block_size, no bias),
    with a batch shape to run them on."""
    n_head, hs = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    config = GPTConfig(
        vocab_size=draw(st.integers(2, 20)),
        block_size=draw(st.integers(1, 6)),
        n_layer=draw(st.integers(1, 2)),
        n_head=n_head,
        n_embd=n_head * hs,
        bias=draw(st.booleans()),
        mlp_hidden=draw(st.none() | st.integers(1, 9)),
        activation=draw(st.sampled_from(["gelu", "gelu_exact", "relu"])),
    )
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, config.block_size))
    return config, B, T, draw(st.integers(0, 2**16))


@settings(max_examples=15, deadline=None)
@given(configs_and_batches())
def test_any_small_config_matches_torch_in_float64(case):
    config, B, T, seed = case
    model = perturbed(GPT(config, seed=seed).to(np.float64), scale=0.1, seed=seed)
    ref = reference(model, np.float64)
    idx, targets = batch(config, B=B, T=T, seed=seed)
    logits, loss = model(idx, targets)
    loss.backward()
    ref_logits, ref_loss = ref(torch.tensor(idx), torch.tensor(targets))
    ref_loss.backward()
    np.testing.assert_allclose(logits.data, ref_logits.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert abs(loss.item() - ref_loss.item()) <= 1e-10
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(
            p.grad, ref_params[name].grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=name
        )
