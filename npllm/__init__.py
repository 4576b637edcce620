"""npllm: a tiny-LLM framework in NumPy and Numba with hand-written backprop, CPU only.

Start with `npllm.autograd` (the engine), then `npllm.functional`, `npllm.layers` and
`npllm.gpt`. The architecture is described in docs/DESIGN.md of the project.

Thread pools: OpenBLAS (numpy's matmuls) and Numba's OpenMP pool spin-wait after each
call and then fight for the 2 cores when calls alternate (PERF_NOTES measured 1.6-3x
slowdowns). npllm sets `OPENBLAS_THREAD_TIMEOUT=4` and `OMP_WAIT_POLICY=passive` (unless
already set) below; they only take effect when npllm is imported before numpy/numba are
loaded, because both read them once at load. Set them in the environment to be sure.
"""

import os as _os

_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
_os.environ.setdefault("OMP_WAIT_POLICY", "passive")

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
    "TrainConfig": "npllm.train",
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
