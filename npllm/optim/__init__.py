"""Optimizers: AdamW, SGD, learning-rate schedules, gradient clipping.

`optimizer.py` holds what they share (param groups, state dicts); each optimizer has its
own file; `clip.py` and `schedule.py` the step's helpers.
"""

from npllm.optim.adamw import AdamW
from npllm.optim.clip import clip_grad_norm
from npllm.optim.optimizer import Optimizer
from npllm.optim.schedule import cosine_lr
from npllm.optim.sgd import SGD

__all__ = ["SGD", "AdamW", "Optimizer", "clip_grad_norm", "cosine_lr"]
