"""Hypothesis strategies shared by the autograd tests: shapes (with size-1 and empty
dimensions), broadcastable shape pairs, and float64 arrays of moderate values."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npllm import Tensor

SETTINGS = {"max_examples": 25, "deadline": None}

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
nonempty_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
broadcast_pairs = hnp.mutually_broadcastable_shapes(
    num_shapes=2, min_dims=0, max_dims=3, max_side=3
)


def arrays(shape, low: float = -2.0, high: float = 2.0):
    return hnp.arrays(
        np.float64, shape, elements=st.floats(low, high, allow_nan=False, allow_infinity=False)
    )


def param(a: np.ndarray) -> Tensor:
    return Tensor(np.array(a, dtype=np.float64), requires_grad=True)


def away_from_zero(a: np.ndarray, margin: float = 0.3) -> np.ndarray:
    """Values kept off kinks and poles (relu at 0, log/div near 0) so finite differences hold."""
    return np.where(a >= 0, a + margin, a - margin)
