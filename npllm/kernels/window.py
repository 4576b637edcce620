"""Sliding-window causal attention (Mistral's), forward: query i of Tq (aligned to the end
of Tk keys, as `attention.py`) sees keys i + Tk - Tq - W < j <= i + Tk - Tq.

    window_attention_forward(q, k, v, window) -> (out, att), shapes as attention_forward

The scores are masked and normalised by the softmax kernel of the active backend
(`kernels.softmax_forward`); the backward is `attention_backward`'s rule as it is, since the
hidden entries of `att` are exactly 0.
"""

from __future__ import annotations

import math

import numpy as np


def window_attention_forward(q, k, v, window, softmax):
    tq, tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    s = (q @ np.ascontiguousarray(np.swapaxes(k, -1, -2))) * q.dtype.type(1.0 / math.sqrt(hs))
    hidden = np.triu(np.ones((tq, tk), dtype=bool), k=tk - tq + 1)
    hidden |= np.tril(np.ones((tq, tk), dtype=bool), k=tk - tq - window)
    s[..., hidden] = -np.inf
    att = softmax(s.reshape(-1, tk)).reshape(s.shape)  # (B, nh, Tq, Tk)
    return att @ v, att
