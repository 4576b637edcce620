"""An independent PyTorch GPT, the reference npllm's model is checked against.

Written from nanoGPT's description with plain torch ops (explicit masked-softmax
attention by default; `sdpa=True` takes torch's scaled_dot_product_attention, nanoGPT's
fast path, which the speed benchmarks compare against) and nothing from npllm; it shares
only the state-dict names, so the same weights load into both by name. Test-only: the
library never imports torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as TF


class TorchConfig:
    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        bias: bool = True,
        mlp_hidden: int | None = None,
        activation: str = "gelu",
        sdpa: bool = False,
    ):
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.bias, self.activation = bias, activation
        self.mlp_hidden = 4 * n_embd if mlp_hidden is None else mlp_hidden
        self.sdpa = sdpa


class TorchLayerNorm(nn.Module):
    def __init__(self, n: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x):
        return TF.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class TorchAttention(nn.Module):
    def __init__(self, c: TorchConfig):
        super().__init__()
        self.n_head, self.sdpa = c.n_head, c.sdpa
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if self.sdpa:
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
            future = torch.ones(T, T, dtype=torch.bool).triu(1)
            att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
            y = att @ v
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class TorchMLP(nn.Module):
    def __init__(self, c: TorchConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, c.mlp_hidden, bias=c.bias)
        self.c_proj = nn.Linear(c.mlp_hidden, c.n_embd, bias=c.bias)
        self.act = {
            "gelu": nn.GELU(approximate="tanh"),
            "gelu_exact": nn.GELU(),
            "relu": nn.ReLU(),
        }[c.activation]

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class TorchBlock(nn.Module):
    def __init__(self, c: TorchConfig):
        super().__init__()
        self.ln_1 = TorchLayerNorm(c.n_embd, c.bias)
        self.attn = TorchAttention(c)
        self.ln_2 = TorchLayerNorm(c.n_embd, c.bias)
        self.mlp = TorchMLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TorchGPT(nn.Module):
    def __init__(self, c: TorchConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c.vocab_size, c.n_embd),
                wpe=nn.Embedding(c.block_size, c.n_embd),
                h=nn.ModuleList(TorchBlock(c) for _ in range(c.n_layer)),
                ln_f=TorchLayerNorm(c.n_embd, c.bias),
            )
        )
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = TF.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss


def torch_gpt_from(state_dict, config, dtype=torch.float32) -> TorchGPT:
    """A TorchGPT holding the given (NumPy) weights, loaded strictly by name."""
    model = TorchGPT(config).to(dtype)
    model.load_state_dict({k: torch.tensor(v, dtype=dtype) for k, v in state_dict.items()})
    return model
