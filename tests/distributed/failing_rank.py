"""`mpiexec -n 2 python failing_rank.py ARGS...`: `npllm train ARGS...` in which rank 1
raises in the forward of training step FAIL_AT (an environment variable)."""

from __future__ import annotations

import os
import sys

from npllm.cli import main
from npllm.gpt import GPT

fail_at, rank = int(os.environ["FAIL_AT"]), int(os.environ["PMI_RANK"])
forward, steps = GPT.forward, 0


def failing_forward(self, *args, **kwargs):
    global steps
    if self.training:
        steps += 1
        if rank == 1 and steps == fail_at:
            raise RuntimeError(f"injected failure at step {fail_at}")
    return forward(self, *args, **kwargs)


GPT.forward = failing_forward
sys.exit(main(["train", *sys.argv[1:]]))
