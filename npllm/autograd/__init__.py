"""Reverse-mode autograd: `Tensor`, `Function`, `no_grad` (engine.py), the basic ops
(ops.py) and finite-difference `gradcheck` (gradcheck.py)."""

from npllm.autograd.engine import Context, Function, Tensor, is_grad_enabled, no_grad, unbroadcast
from npllm.autograd.gradcheck import gradcheck
from npllm.autograd.ops import concatenate, split

__all__ = [
    "Context",
    "Function",
    "Tensor",
    "concatenate",
    "gradcheck",
    "is_grad_enabled",
    "no_grad",
    "split",
    "unbroadcast",
]
