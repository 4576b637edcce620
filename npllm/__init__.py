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
from npllm.gpt import GPT, GPTConfig
from npllm.optim import SGD, AdamW, clip_grad_norm, cosine_lr
from npllm.tokenizers import BPETokenizer, CharTokenizer
from npllm.train import TrainConfig

__version__ = "0.1.0"
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
