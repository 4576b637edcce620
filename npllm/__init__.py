"""npllm: a tiny-LLM framework in NumPy and Numba with hand-written backprop, CPU only.

Start with `npllm.autograd` (the engine), then `npllm.functional`, `npllm.layers` and
`npllm.gpt`. The architecture is described in the repository's docs/architecture.md, the
gradients derived in docs/backprop.md.

Threads: npllm runs all its parallel work, matmuls included, on Numba's one thread pool
(npllm/kernels/blas.py says how), and changes no environment variable, so neither the
order of imports nor the other libraries in the process change its speed or theirs.
"""

from npllm.autograd import Tensor, concatenate, gradcheck, no_grad, split
from npllm.errors import NpllmError

__version__ = "0.1.0"

# The model, optimizers, tokenizers and trainer load on first use (PEP 562): they pull in
# Numba (~0.5 s), which `npllm --help` and the autograd engine alone do not need.
_LAZY = {
    "GPT": "npllm.gpt",
    "GPTConfig": "npllm.gpt",
    "SGD": "npllm.optim",
    "AdamW": "npllm.optim",
    "clip_grad_norm": "npllm.optim",
    "cosine_lr": "npllm.optim",
    "BPETokenizer": "npllm.tokenizers",
    "CharTokenizer": "npllm.tokenizers",
    "TrainConfig": "npllm.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'npllm' has no attribute {name!r}")


__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "GPT",
    "SGD",
    "AdamW",
    "GPTConfig",
    "NpllmError",
    "Tensor",
    "TrainConfig",
    "clip_grad_norm",
    "concatenate",
    "cosine_lr",
    "gradcheck",
    "no_grad",
    "split",
]
