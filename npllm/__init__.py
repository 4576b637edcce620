"""npllm: a tiny-LLM framework in NumPy and Numba with hand-written backprop, CPU only.

Start with `npllm.autograd` (the engine), then `npllm.functional`, `npllm.layers` and
`npllm.gpt`. The architecture is described in docs/DESIGN.md of the project.
"""

from npllm.autograd import Tensor, concatenate, gradcheck, no_grad, split
from npllm.errors import NpllmError

__version__ = "0.1.0"
__all__ = ["NpllmError", "Tensor", "concatenate", "gradcheck", "no_grad", "split"]
