"""Rotary position embedding (RoPE) as transformers' Llama applies it ("rotate half"):
channel d of a head is paired with channel d + hs/2 and the pair is turned by the angle
pos * inv_freq[d]. The angles' cos and sin come as tables (`npllm.layers.rope` makes them,
with the scaling of `rope_scaling`).

    rope_forward(x, cos, sin) -> y       x (N, T, hs), cos and sin (T, hs/2)
        x1, x2 = x[..., :hs/2], x[..., hs/2:]
        y = [x1 cos - x2 sin, x2 cos + x1 sin]
    rope_backward(dy, cos, sin) -> dx
        a rotation's inverse is its transpose, the turn by -angle:
        dx = [dy1 cos + dy2 sin, dy2 cos - dy1 sin]  (= rope_forward(dy, cos, -sin))

Tables may carry a factor (YaRN's attention scaling multiplies cos and sin); the rules
hold for any cos and sin, the backward being the transpose of the forward's linear map.
"""

from __future__ import annotations

import numpy as np

from npllm.kernels._jit import jit, run

KERNELS = ("rope_forward", "rope_backward")


# ---- NumPy reference -------------------------------------------------------------------
def rope_forward_numpy(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_backward_numpy(dy, cos, sin):
    # y = R x, R a rotation per pair  =>  dx = R^T dy, the turn by -angle:
    # dx = [dy1 cos + dy2 sin, dy2 cos - dy1 sin]
    return rope_forward_numpy(dy, cos, -sin)


# ---- Numba -----------------------------------------------------------------------------
@jit
def rope_rows(x, cos, sin, sign, out):
    """out[t] = x[t] turned by the angles of table row t (by minus them for sign -1);
    x and out (T, hs), cos and sin (T, hs/2). out may be x: each pair is read first.
    The decode step calls this on one head's q or k in place."""
    h = x.shape[1] // 2
    for t in range(x.shape[0]):
        c, s = cos[t], sin[t]
        for d in range(h):
            a, b = x[t, d], x[t, d + h]
            sd = sign * s[d]
            out[t, d] = a * c[d] - b * sd
            out[t, d + h] = b * c[d] + a * sd


@jit
def turn_rows(x, xo, ldx, out, oo, ldo, n, hs, cos, sin, sign, c0):
    """n rows of hs values (at xo, ldx apart in the flat x) into the flat out (at oo, ldo
    apart), turned by the angles of table rows c0.. (by minus them for sign -1): for the
    attention kernels, which read q and k where the linears wrote them (kernels/attention)."""
    h = hs // 2
    for j in range(n):
        a, o, c, s = xo + j * ldx, oo + j * ldo, cos[c0 + j], sin[c0 + j]
        for d in range(h):
            x1, x2, sd = x[a + d], x[a + d + h], sign * s[d]
            out[o + d] = x1 * c[d] - x2 * sd
            out[o + d + h] = x2 * c[d] + x1 * sd


@jit
def _rope_heads(x, cos, sin, sign, out, lo, hi):
    # y = R x per pair; dx = R^T dy, the turn by -angle (sign -1)
    for n in range(lo, hi):
        rope_rows(x[n], cos, sin, sign, out[n])


def _rope(x, cos, sin, sign):
    x = np.ascontiguousarray(x)
    cos = np.ascontiguousarray(cos, x.dtype)
    sin = np.ascontiguousarray(sin, x.dtype)
    out = np.empty_like(x)
    x3, o3 = x.reshape(-1, x.shape[-2], x.shape[-1]), out.reshape(-1, x.shape[-2], x.shape[-1])
    run(_rope_heads, (x3, cos, sin, x.dtype.type(sign), o3), x3.shape[0], x.size)
    return out


def rope_forward_numba(x, cos, sin):
    return _rope(x, cos, sin, 1)


def rope_backward_numba(dy, cos, sin):
    return _rope(dy, cos, sin, -1)
