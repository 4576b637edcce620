"""Elementwise maps on arrays of any shape: the activations, forward and backward, and the
residual stream's addition.

    add(a, b) -> a + b                           a, b of one shape and float dtype
    relu_forward(x) -> y                         y = max(x, 0)
    relu_backward(dy, y) -> dx                   dx = dy * (y > 0)
    gelu_forward(x, approximate) -> y
        "tanh": y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        "none": y = x Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))
    gelu_backward(dy, x, approximate) -> dx
        "tanh": dx = dy (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2))
        "none": dx = dy (Phi(x) + x phi(x)), phi(x) = exp(-x^2/2) / sqrt(2 pi)

GELU's backward takes the input x (as torch's does), so only x is kept between passes.
`add` is the transformer's residual additions (ops.Add uses it for two same-shaped
arrays): NumPy adds on one thread, this on the pool, each thread on the rows it wrote
last (cpu-small's 768 x 128 in a training step ~100 -> ~60 us; guppy's 2048 x 384 2x).
"""

from __future__ import annotations

import math

import numpy as np

from npllm.kernels._jit import PAR_MIN, ferf, fexp, flat, jit, run, wide_vectors

KERNELS = ("add", "relu_forward", "relu_backward", "gelu_forward", "gelu_backward")

_K = math.sqrt(2.0 / math.pi)
_C = 0.044715
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erf_numpy(x: np.ndarray) -> np.ndarray:
    """erf elementwise: NumPy has none, and npllm depends on no SciPy. math.erf per
    element through np.frompyfunc is slow but exact; this is the reference only."""
    return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)


# ---- NumPy reference -------------------------------------------------------------------
def add_numpy(a, b):
    return a + b


def relu_forward_numpy(x):
    return np.maximum(x, 0)


def relu_backward_numpy(dy, y):
    # y = max(x, 0)  =>  dx = dy * (y > 0): slope 1 where x > 0, 0 elsewhere (0 at x = 0)
    return dy * (y > 0)


def gelu_forward_numpy(x, approximate="tanh"):
    t = x.dtype.type
    if approximate == "tanh":
        return t(0.5) * x * (1 + np.tanh(t(_K) * (x + t(_C) * x * x * x)))
    return t(0.5) * x * (1 + _erf_numpy(x * t(_INV_SQRT2)))


def gelu_backward_numpy(dy, x, approximate="tanh"):
    t = x.dtype.type
    if approximate == "tanh":
        # y = 0.5 x (1 + tanh(u)), u = k (x + c x^3)  =>  product and chain rule:
        # dx = dy (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx), du/dx = k (1 + 3 c x^2)
        th = np.tanh(t(_K) * (x + t(_C) * x * x * x))
        du = t(_K) * (1 + t(3 * _C) * x * x)
        return dy * (t(0.5) * (1 + th) + t(0.5) * x * (1 - th * th) * du)
    # y = x Phi(x)  =>  dx = dy (Phi(x) + x phi(x)), Phi' = phi the normal density
    cdf = t(0.5) * (1 + _erf_numpy(x * t(_INV_SQRT2)))
    pdf = np.exp(t(-0.5) * x * x) * t(_INV_SQRT2PI)
    return dy * (cdf + x * pdf)


# ---- Numba -----------------------------------------------------------------------------
# Each kernel is a serial loop over elements lo..hi, run by `_jit.run` (in parallel chunks
# for large arrays). The loop walks slices from index 0: a loop over range(lo, hi) stayed
# scalar and ran 6-10x slower. Constants are made in the input's dtype: a Python literal
# would promote float32 math to float64 in Numba (and send fexp/ferf to their scalar
# float64 branch).
@jit
def _add(a, b, out, lo, hi):
    a, b, out = a[lo:hi], b[lo:hi], out[lo:hi]
    for i in range(out.size):
        out[i] = a[i] + b[i]


@jit
def _relu_fwd(x, out, lo, hi):
    # y = max(x, 0)
    x, out = x[lo:hi], out[lo:hi]
    zero = x.dtype.type(0)
    for i in range(x.size):
        out[i] = max(x[i], zero)


@jit
def _relu_bwd(dy, y, dx, lo, hi):
    # y = max(x, 0)  =>  dx = dy * (y > 0)
    dy, y, dx = dy[lo:hi], y[lo:hi], dx[lo:hi]
    zero = y.dtype.type(0)
    for i in range(y.size):
        dx[i] = dy[i] if y[i] > zero else zero


@jit(inline=True)
def _tanh_parts(u):
    """(1 + tanh(u), 1 - tanh(u)^2) from e = exp(-2|u|), without cancellation:
    1 + tanh = 2/(1+e) for u >= 0 and 2e/(1+e) below; 1 - tanh^2 = 4e/(1+e)^2. Both stay
    accurate in relative terms where 1 +- tanh underflows, e.g. GELU's tail at x = -10."""
    t = type(u)
    e = fexp(t(-2) * abs(u))
    r = t(1) / (t(1) + e)
    onep = t(2) * r if u >= t(0) else t(2) * e * r
    return onep, t(4) * e * r * r


@jit
def _gelu_tanh_fwd(x, out, lo, hi):
    # y = 0.5 x (1 + tanh(u)), u = k (x + c x^3)
    wide_vectors()
    x, out = x[lo:hi], out[lo:hi]
    t = x.dtype.type
    k_, c_, half = t(_K), t(_C), t(0.5)
    for i in range(x.size):
        v = x[i]
        onep, _s = _tanh_parts(k_ * (v + c_ * v * v * v))
        out[i] = half * v * onep


@jit
def _gelu_tanh_bwd(dy, x, dx, lo, hi):
    # y = 0.5 x (1 + tanh(u))  =>  dx = dy (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx),
    # du/dx = k (1 + 3 c x^2)
    wide_vectors()
    dy, x, dx = dy[lo:hi], x[lo:hi], dx[lo:hi]
    t = x.dtype.type
    k_, c_, c3, half, one = t(_K), t(_C), t(3 * _C), t(0.5), t(1)
    for i in range(x.size):
        v = x[i]
        onep, sech2 = _tanh_parts(k_ * (v + c_ * v * v * v))
        du = k_ * (one + c3 * v * v)
        dx[i] = dy[i] * (half * onep + half * v * sech2 * du)


@jit
def _gelu_erf_fwd(x, out, lo, hi):
    # y = x Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2))
    wide_vectors()
    x, out = x[lo:hi], out[lo:hi]
    t = x.dtype.type
    s, half, one = t(_INV_SQRT2), t(0.5), t(1)
    for i in range(x.size):
        v = x[i]
        out[i] = half * v * (one + ferf(v * s))


@jit
def _gelu_erf_bwd(dy, x, dx, lo, hi):
    # y = x Phi(x)  =>  dx = dy (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    wide_vectors()
    dy, x, dx = dy[lo:hi], x[lo:hi], dx[lo:hi]
    t = x.dtype.type
    s, p, half, one = t(_INV_SQRT2), t(_INV_SQRT2PI), t(0.5), t(1)
    for i in range(x.size):
        v = x[i]
        cdf = half * (one + ferf(v * s))
        pdf = fexp(-half * v * v) * p
        dx[i] = dy[i] * (cdf + v * pdf)


def _map(kernel, *arrays: np.ndarray) -> np.ndarray:
    """kernel(*arrays, out, lo, hi) over all elements; out is like arrays[0], in the shape
    of the last array."""
    flats = [flat(a) for a in arrays]
    out = np.empty_like(flats[0])
    run(kernel, (*flats, out), out.size)
    return out.reshape(arrays[-1].shape)


def add_numba(a, b):
    if a.size < PAR_MIN or a.shape != b.shape or a.dtype != b.dtype:
        return a + b  # (one thread anyway, or broadcasting: NumPy's)
    return _map(_add, a, b)


def relu_forward_numba(x):
    return _map(_relu_fwd, x)


def relu_backward_numba(dy, y):
    return _map(_relu_bwd, dy, y)


def gelu_forward_numba(x, approximate="tanh"):
    return _map(_gelu_tanh_fwd if approximate == "tanh" else _gelu_erf_fwd, x)


def gelu_backward_numba(dy, x, approximate="tanh"):
    return _map(_gelu_tanh_bwd if approximate == "tanh" else _gelu_erf_bwd, dy, x)
