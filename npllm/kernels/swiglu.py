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

from npllm.kernels._jit import fexp, flat, jit, run

KERNELS = ("swiglu_forward", "swiglu_backward")


# ---- NumPy reference -------------------------------------------------------------------
def _sigmoid(g: np.ndarray) -> np.ndarray:
    # exp of -|g| only: no overflow warning for large |g|
    e = np.exp(-np.abs(g))
    return np.where(g >= 0, 1 / (1 + e), e / (1 + e)).astype(g.dtype, copy=False)


def swiglu_forward_numpy(g, u):
    return g * _sigmoid(g) * u


def swiglu_backward_numpy(dy, g, u):
    # y = silu(g) * u, silu(g) = g s, s = sigmoid(g), s' = s (1 - s)  =>
    # du = dy * g * s, dg = dy * u * (s + g s (1 - s)) = dy * u * s * (1 + g (1 - s))
    s = _sigmoid(g)
    du = dy * g * s
    dg = dy * u * s * (1 + g * (1 - s))
    return dg, du


# ---- Numba -----------------------------------------------------------------------------
# Serial loops over elements lo..hi (slices walked from index 0: what vectorises), run by
# `_jit.run` (chunks in parallel for large arrays). The decode step calls `_swiglu_fwd`.
@jit(inline=True)
def _sig(v):
    t = type(v)
    e = fexp(-abs(v))
    r = t(1) / (t(1) + e)
    return r if v >= t(0) else e * r


@jit
def _swiglu_fwd(g, u, out, lo, hi):
    # y = g * sigmoid(g) * u
    g, u, out = g[lo:hi], u[lo:hi], out[lo:hi]
    for i in range(out.size):
        out[i] = g[i] * _sig(g[i]) * u[i]


@jit
def _swiglu_bwd(dy, g, u, dg, du, lo, hi):
    # y = silu(g) * u, s = sigmoid(g)  =>  du = dy * g * s, dg = dy * u * s * (1 + g (1 - s))
    dy, g, u, dg, du = dy[lo:hi], g[lo:hi], u[lo:hi], dg[lo:hi], du[lo:hi]
    one = g.dtype.type(1)
    for i in range(g.size):
        s = _sig(g[i])
        du[i] = dy[i] * g[i] * s
        dg[i] = dy[i] * u[i] * s * (one + g[i] * (one - s))


def swiglu_forward_numba(g, u):
    gf = flat(g)
    out = np.empty_like(gf)
    run(_swiglu_fwd, (gf, flat(u), out), gf.size)
    return out.reshape(g.shape)


def swiglu_backward_numba(dy, g, u):
    gf = flat(g)
    dg, du = np.empty_like(gf), np.empty_like(gf)
    run(_swiglu_bwd, (flat(dy), gf, flat(u), dg, du), gf.size)
    return dg.reshape(g.shape), du.reshape(g.shape)
