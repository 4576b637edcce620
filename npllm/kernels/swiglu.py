"""SwiGLU's gating (Llama's MLP: down(silu(gate(x)) * up(x))), forward and backward, on
two arrays of the same shape: the gate and up projections' outputs.

    swiglu_forward(g, u) -> y                    y = silu(g) * u, silu(g) = g * sigmoid(g)
    swiglu_backward(dy, g, u) -> (dg, du)
        du = dy * silu(g)
        dg = dy * u * s * (1 + g * (1 - s)),   s = sigmoid(g)
        (d silu / dg = s + g s (1 - s))

The backward takes the inputs (as torch's autograd keeps them), so nothing else is saved.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from npllm.kernels._jit import fexp, jit

KERNELS = ("swiglu_forward", "swiglu_backward")

# Below this many elements a prange launch costs more than it saves (activations.py).
_PAR_MIN = 1 << 16


# ---- NumPy reference -------------------------------------------------------------------
def _sigmoid(g: np.ndarray) -> np.ndarray:
    # exp of -|g| only: no overflow warning for large |g|
    e = np.exp(-np.abs(g))
    return np.where(g >= 0, 1 / (1 + e), e / (1 + e)).astype(g.dtype, copy=False)


def swiglu_forward_numpy(g, u):
    return g * _sigmoid(g) * u


def swiglu_backward_numpy(dy, g, u):
    # y = g * sigmoid(g) * u
    s = _sigmoid(g)
    du = dy * g * s
    dg = dy * u * s * (1 + g * (1 - s))
    return dg, du


# ---- Numba -----------------------------------------------------------------------------
# Serial loops over flat arrays from index 0 (they vectorise: docs/performance.md, "Numba
# habits"), cut into chunks
# run in parallel for large arrays. The decode step calls `_swiglu_fwd` directly.
@jit(inline=True)
def _sig(v):
    t = type(v)
    e = fexp(-abs(v))
    r = t(1) / (t(1) + e)
    return r if v >= t(0) else e * r


@jit
def _swiglu_fwd(g, u, out):
    for i in range(out.size):
        out[i] = g[i] * _sig(g[i]) * u[i]


@jit
def _swiglu_bwd(dy, g, u, dg, du):
    one = g.dtype.type(1)
    for i in range(g.size):
        s = _sig(g[i])
        du[i] = dy[i] * g[i] * s
        dg[i] = dy[i] * u[i] * s * (one + g[i] * (one - s))


@jit(parallel=True)
def _swiglu_par(dy, g, u, out, dg, backward, nchunks):
    n = g.size
    per = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        lo, hi = c * per, min(n, (c + 1) * per)
        if backward:
            _swiglu_bwd(dy[lo:hi], g[lo:hi], u[lo:hi], dg[lo:hi], out[lo:hi])
        else:
            _swiglu_fwd(g[lo:hi], u[lo:hi], out[lo:hi])


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1)


def swiglu_forward_numba(g, u):
    gf, uf = _flat(g), _flat(u)
    out = np.empty_like(gf)
    if gf.size >= _PAR_MIN:
        _swiglu_par(gf, gf, uf, out, out, False, 2 * min(8, gf.size // _PAR_MIN))
    else:
        _swiglu_fwd(gf, uf, out)
    return out.reshape(g.shape)


def swiglu_backward_numba(dy, g, u):
    dyf, gf, uf = _flat(dy), _flat(g), _flat(u)
    dg, du = np.empty_like(gf), np.empty_like(gf)
    if gf.size >= _PAR_MIN:
        _swiglu_par(dyf, gf, uf, du, dg, True, 2 * min(8, gf.size // _PAR_MIN))
    else:
        _swiglu_bwd(dyf, gf, uf, dg, du)
    return dg.reshape(g.shape), du.reshape(g.shape)
