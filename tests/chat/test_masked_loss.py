"""The masked (assistant-only) cross-entropy of chat batches against PyTorch's
`ignore_index` loss and gradient, and against float64 central differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from npllm import GPT, GPTConfig, Tensor
from npllm import functional as F
from npllm.autograd import gradcheck
from npllm.chat_data import get_chat_batch, load_chat_split, prepare_chat, window_starts


@pytest.fixture(scope="module")
def chat_batch(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    meta = prepare_chat("chat-demo", d, size=120, seed=2)
    tokens, mask, starts = load_chat_split(d, "train")
    ok = window_starts(tokens, starts, 48, "train")
    x, y = get_chat_batch(tokens, mask, ok, 6, 48, np.random.default_rng(0))
    assert 0 < (y != -1).mean() < 0.9  # some targets kept, some ignored
    return x, y, meta["vocab_size"]


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_loss_and_gradient_equal_torch_ignore_index(chat_batch, dtype):
    x, y, V = chat_batch
    model = GPT(GPTConfig(vocab_size=V, block_size=48, n_layer=1, n_head=2, n_embd=16), seed=0)
    logits = model(x)[0].data.astype(dtype) * 4  # (B, T, V): a trained model's spread
    ours = Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(ours, y)
    loss.backward()
    theirs = torch.tensor(logits, requires_grad=True)
    ref = TF.cross_entropy(
        theirs.reshape(-1, V), torch.tensor(y).reshape(-1), ignore_index=-1, reduction="mean"
    )
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-6 * abs(ref.item())
    assert rel(ours.grad, theirs.grad.numpy()) <= 1e-6
    # ignored positions get exactly no gradient; the mean is over kept targets only
    assert not np.any(ours.grad[y == -1])
    kept = y != -1
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    manual = np.mean(lse[kept] - np.take_along_axis(logits, y.clip(0)[..., None], -1)[..., 0][kept])
    assert abs(loss.item() - manual) <= 1e-6 * manual


def test_model_loss_on_a_chat_batch_is_the_masked_mean(chat_batch):
    x, y, V = chat_batch
    model = GPT(GPTConfig(vocab_size=V, block_size=48, n_layer=1, n_head=2, n_embd=16), seed=1)
    logits, loss = model(x, y)
    ref = TF.cross_entropy(
        torch.tensor(logits.data).reshape(-1, V), torch.tensor(y).reshape(-1), ignore_index=-1
    )
    assert abs(loss.item() - ref.item()) <= 1e-6 * ref.item()


def test_masked_loss_gradient_matches_central_differences():
    rng = np.random.default_rng(0)
    logits = Tensor(rng.standard_normal((2, 5, 7)) * 2, requires_grad=True)  # float64
    targets = rng.integers(0, 7, size=(2, 5))
    targets[0, :3] = -1  # a user turn
    targets[1, 4] = -1
    gradcheck(lambda z: F.cross_entropy(z, targets), [logits])
