"""`FlatGrads`: the gradients of many parameters in one flat buffer.

Each parameter's `grad_home` is its slice of the buffer, so the backward writes every
gradient there instead of into a new array (engine.py, `Tensor.backward`), and the
optimizer and gradient clipping each make one kernel call over the whole buffer instead
of one per parameter: llm.c keeps its gradients this way, PyTorch's DDP does with
`gradient_as_bucket_view`. At cpu-small's 52 parameters those per-parameter calls were
~2 ms of a ~36 ms training step (docs/performance.md, "One call for all parameters").

The price is PyTorch's `zero_grad(set_to_none=False)` semantics: after `zero_grad()` the
next backward writes the new gradients into the same arrays, so copy a `.grad` to keep it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

# id(buffer) -> its FlatGrads, while that lives: how `buffer_of` recognises a buffer
_LIVE: weakref.WeakValueDictionary[int, FlatGrads] = weakref.WeakValueDictionary()


class FlatGrads:
    """One zeroed buffer of `dtype` for the gradients of `params`, in their order (the
    slice of parameter k is starts[k]:starts[k + 1]); each parameter's `grad_home` is set
    to its slice (`homes`)."""

    def __init__(self, params: Sequence[Any], dtype: Any) -> None:
        self.params = tuple(params)
        self.starts = np.cumsum([0] + [p.data.size for p in self.params])  # p's slice: a:b
        self.buffer = np.zeros(int(self.starts[-1]), dtype)
        self.homes = tuple(
            self.buffer[a:b].reshape(p.shape)
            for p, a, b in zip(self.params, self.starts, self.starts[1:])
        )
        self.ids = frozenset(map(id, self.homes))
        for p, home in zip(self.params, self.homes):
            p.grad_home = home
        _LIVE[id(self.buffer)] = self

    def gather(self) -> bool:
        """Make every parameter's `.grad` its home, copying a gradient that the engine put
        elsewhere (one computed before the homes existed, or while `.grad` was set);
        False, with nothing changed for the rest, if a parameter has no gradient."""
        for p, home in zip(self.params, self.homes):
            g = p.grad
            if g is not home:
                if g is None:
                    return False
                np.copyto(home, g, casting="unsafe")
                p.grad = home
        return True


def buffer_of(grads: Sequence[np.ndarray]) -> np.ndarray | None:
    """The flat buffer whose slices `grads` are, exactly and each once (in any order), if
    they are the homes of a live `FlatGrads`; else None."""
    if not grads:
        return None
    base = grads[0].base
    owner = _LIVE.get(id(base)) if base is not None else None
    if owner is None or owner.buffer is not base or len(grads) != len(owner.homes):
        return None
    return base if {id(g) for g in grads} == owner.ids else None
