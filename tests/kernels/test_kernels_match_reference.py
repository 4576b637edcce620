"""Every Numba kernel equals its NumPy reference, on hypothesis-drawn shapes: T=1, odd
sizes, non-contiguous inputs, large-magnitude values; float32 (to the approximations'
accuracy) and float64 (to rounding)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllm import kernels as K

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}
FEW = settings(max_examples=12, deadline=None)

dims = st.integers(1, 37)
seeds = st.integers(0, 2**32 - 1)


def arr(rng, shape, dtype, scale=1.0, contiguous=True):
    """A random array; when not `contiguous`, the same values in a strided layout."""
    a = (rng.standard_normal(shape) * scale).astype(dtype)
    if contiguous or len(shape) == 0:
        return a
    big = np.zeros((*shape[:-1], 2 * shape[-1]), dtype=dtype)
    view = big[..., ::2]
    view[...] = a
    return view


def both(name, *args):
    return K.get(name, "numpy")(*args), K.get(name, "numba")(*args)


def close(a, b, dtype, scale=1.0):
    tol = TOL[dtype]
    if a is None or b is None:
        assert a is None and b is None
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == dtype and a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(n=dims, k=dims, m=dims, contiguous=st.booleans(), seed=seeds)
def test_linear(dtype, n, k, m, contiguous, seed):
    rng = np.random.default_rng(seed)
    x, w, b = arr(rng, (n, k), dtype, 1, contiguous), arr(rng, (m, k), dtype), arr(rng, (m,), dtype)
    ref, got = both("linear_forward", x, w, b)
    close(ref, got, dtype, scale=k)
    dout = arr(rng, (n, m), dtype, 1, contiguous)
    for r, g in zip(*both("linear_backward", dout, x, w, True, True, True)):
        close(r, g, dtype, scale=max(n, m))


def test_gemm_numba_on_blocked_edges():
    rng = np.random.default_rng(0)
    for m, k, n in [(1, 1, 1), (5, 300, 7), (33, 513, 65), (64, 64, 64), (70, 9, 259), (3, 0, 4)]:
        a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        np.testing.assert_allclose(K.matmul.gemm_numba(a, b), a @ b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log", [False, True])
@FEW
@given(
    n=dims,
    m=st.integers(1, 200),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    contiguous=st.booleans(),
    seed=seeds,
)
def test_softmax(dtype, log, n, m, scale, contiguous, seed):
    rng = np.random.default_rng(seed)
    name = "log_softmax" if log else "softmax"
    x = arr(rng, (n, m), dtype, scale, contiguous)
    ref, got = both(f"{name}_forward", x)
    close(ref, got, dtype, scale=scale if log else 1.0)
    dy = arr(rng, (n, m), dtype, 1, contiguous)
    close(*both(f"{name}_backward", dy, ref), dtype, scale=m if log else 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(n=dims, c=st.integers(1, 200), affine=st.booleans(), contiguous=st.booleans(), seed=seeds)
def test_layernorm(dtype, n, c, affine, contiguous, seed):
    rng = np.random.default_rng(seed)
    x = arr(rng, (n, c), dtype, 3.0, contiguous) + dtype(5)
    w = arr(rng, (c,), dtype) if affine else None
    b = arr(rng, (c,), dtype) if affine else None
    (o1, m1, r1), (o2, m2, r2) = both("layernorm_forward", x, w, b, 1e-5)
    close(o1, o2, dtype, 10)
    close(m1, m2, dtype, 10)
    close(r1, r2, dtype)
    dout = arr(rng, (n, c), dtype, 1, contiguous)
    for r, g in zip(*both("layernorm_backward", dout, x, m1, r1, w)):
        close(r, g, dtype, scale=10 * n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["relu", "tanh", "none"])
@FEW
@given(
    shape=st.lists(dims, min_size=1, max_size=3),
    scale=st.sampled_from([1.0, 5.0, 1e3]),
    contiguous=st.booleans(),
    seed=seeds,
)
def test_activations(dtype, kind, shape, scale, contiguous, seed):
    rng = np.random.default_rng(seed)
    x = arr(rng, tuple(shape), dtype, scale, contiguous)
    dy = arr(rng, tuple(shape), dtype, 1, contiguous)
    if kind == "relu":
        y, y2 = both("relu_forward", x)
        close(y, y2, dtype)
        close(*both("relu_backward", dy, y), dtype)
    else:
        close(*both("gelu_forward", x, kind), dtype, scale)
        close(*both("gelu_backward", dy, x, kind), dtype, scale)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(
    n=dims,
    v=st.integers(1, 300),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    ignore=st.floats(0, 1),
    contiguous=st.booleans(),
    seed=seeds,
)
def test_cross_entropy(dtype, n, v, scale, ignore, contiguous, seed):
    rng = np.random.default_rng(seed)
    logits = arr(rng, (n, v), dtype, scale, contiguous)
    targets = rng.integers(0, v, size=n)
    targets[rng.random(n) < ignore] = -1
    (l1, lse1), (l2, lse2) = both("cross_entropy_forward", logits, targets, -1)
    close(l1, l2, dtype, scale)
    close(lse1, lse2, dtype, scale)
    dl = np.asarray(1.5, dtype)
    close(*both("cross_entropy_backward", dl, logits, targets, lse1, -1), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(
    b=st.integers(1, 3),
    nh=st.integers(1, 3),
    tq=st.integers(1, 17),
    extra=st.integers(0, 9),
    hs=st.integers(1, 33),
    causal=st.booleans(),
    contiguous=st.booleans(),
    seed=seeds,
)
def test_attention(dtype, b, nh, tq, extra, hs, causal, contiguous, seed):
    rng = np.random.default_rng(seed)
    tk = tq + extra
    q = arr(rng, (b, nh, tq, hs), dtype, 1, contiguous)
    k = arr(rng, (b, nh, tk, hs), dtype, 1, contiguous)
    v = arr(rng, (b, nh, tk, hs), dtype, 1, contiguous)
    (o1, a1), (o2, a2) = both("attention_forward", q, k, v, causal)
    close(o1, o2, dtype, 3)
    close(a1, a2, dtype)
    dout = arr(rng, (b, nh, tq, hs), dtype, 1, contiguous)
    for r, g in zip(*both("attention_backward", dout, q, k, v, a1, causal)):
        close(r, g, dtype, 10)


def same_attention(name, dtype, p, *args):
    """Both backends' forward of a packed attention kernel (args, then the dropout p):
    outputs and probabilities close, the same dropout mask (none without dropout).
    Returns the reference's (y, att, keep) and the Numba side's y and keep."""
    (y1, a1, k1), (y2, a2, k2) = both(name, *args, p)
    close(y1, y2, dtype, 3)
    close(a1, a2, dtype)
    if p:
        np.testing.assert_array_equal(k1, k2)
    else:
        assert k1 is None and k2 is None
    return y1, a1, k1, y2, k2


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(
    b=st.integers(1, 3),
    nh=st.integers(1, 3),
    t=st.integers(1, 70),
    hs=st.integers(1, 33),
    window=st.sampled_from([0, 1, 5, 40]),
    p=st.sampled_from([0.0, 0.1, 0.5]),
    contiguous=st.booleans(),
    seed=seeds,
)
def test_attention_qkv(dtype, b, nh, t, hs, window, p, contiguous, seed):
    """Attention read from q|k|v side by side and written with the heads side by side:
    every head at its offset, gradients into the right columns (and every one of them);
    with dropout on the probabilities, the same kept entries and their gradients."""
    rng = np.random.default_rng(seed)
    qkv = arr(rng, (b, t, 3 * nh * hs), dtype, 1, contiguous)
    u = rng.random((b, nh, t, t)).astype(dtype) if p else None
    y1, a1, k1, y2, k2 = same_attention("attention_qkv_forward", dtype, p, qkv, nh, True, window, u)
    if p and k2.size >= 200:  # some dropped and some kept (a tiny one may be all either way)
        assert 0 < k2.mean() < 1
    assert y2.shape == (b, t, nh * hs) and y2.flags.c_contiguous
    dy = arr(rng, (b, t, nh * hs), dtype, 1, contiguous)
    close(*both("attention_qkv_backward", dy, qkv, a1, nh, True, k1, p), dtype, 10)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(
    b=st.integers(1, 2),
    n_kv=st.integers(1, 2),
    group=st.integers(1, 3),
    t=st.integers(1, 40),
    half=st.integers(1, 12),
    rope=st.booleans(),
    p=st.sampled_from([0.0, 0.3]),
    window=st.sampled_from([0, 3]),
    seed=seeds,
)
def test_attention_heads(dtype, b, n_kv, group, t, half, rope, p, window, seed):
    """Attention from three linears' outputs: grouped-query heads (each k/v head serving
    `group` query heads, its gradients summed over them), RoPE turning q and k inside the
    kernel and the gradients turned back, dropout, a window."""
    rng = np.random.default_rng(seed)
    nh, hs = n_kv * group, 2 * half
    q = arr(rng, (b, t, nh * hs), dtype)
    k, v = arr(rng, (b, t, n_kv * hs), dtype), arr(rng, (b, t, n_kv * hs), dtype, 1, False)
    ang = rng.random((t, half)) * 3
    cos, sin = (np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)) if rope else (None, None)
    u = rng.random((b, nh, t, t)).astype(dtype) if p else None
    args = (q, k, v, nh, n_kv, cos, sin, window, u)
    y1, a1, k1, _, _ = same_attention("attention_heads_forward", dtype, p, *args)
    dy = arr(rng, y1.shape, dtype)
    back = (dy, q, k, v, a1, nh, n_kv, cos, sin, k1, p)
    for r, g in zip(*both("attention_heads_backward", *back)):
        close(r, g, dtype, 10 * group)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, n", [(1000, 50), (2050, 17), (40, 1000)])
def test_softmax_in_parallel_blocks(dtype, rows, n):
    """Past the parallel threshold: chunks of rows that do not start on the forward's
    blocks of 16 rows, rows of every length class, large values."""
    rng = np.random.default_rng(rows + n)
    x = arr(rng, (rows, n), dtype, 30)
    x[::7, ::3] = -np.inf  # masked entries, as in attention scores
    close(*both("softmax_forward", x), dtype)
    close(*both("log_softmax_forward", x[:, 1:2].repeat(n, 1) + x), dtype, scale=30)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tq, extra", [(40, 0), (70, 0), (33, 37), (1, 70)])
@pytest.mark.parametrize("window", [0, 5, 45])
def test_attention_rows_past_the_padding(dtype, tq, extra, window):
    """Rows longer than the forward's padding of 32 keys, a cache offset (tk > tq) and a
    sliding window that starts inside a padded span: the masked keys get exactly 0."""
    rng = np.random.default_rng(tq + extra + window)
    tk = tq + extra
    q, dout = (arr(rng, (2, 2, tq, 8), dtype, 2) for _ in range(2))
    k, v = (arr(rng, (2, 2, tk, 8), dtype, 2) for _ in range(2))
    for causal in (True, False):
        win = window if causal else 0
        ref = K.get("attention_forward", "numpy")(q, k, v, causal, win)
        got = K.get("attention_forward", "numba")(q, k, v, causal, win)
        close(ref[0], got[0], dtype, 3)
        close(ref[1], got[1], dtype)
        np.testing.assert_array_equal(got[1] == 0, ref[1] == 0)
        for r, g in zip(*both("attention_backward", dout, q, k, v, ref[1], causal)):
            close(r, g, dtype, 10)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(n=st.integers(0, 50), v=st.integers(1, 20), c=dims, seed=seeds)
def test_embedding(dtype, n, v, c, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v, size=n)  # repeats are likely
    w = arr(rng, (v, c), dtype)
    close(*both("embedding_forward", idx, w), dtype)
    dout = arr(rng, (n, c), dtype, 1, contiguous=False)
    close(*both("embedding_backward", dout, idx, v), dtype, scale=n + 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", [1, 7, 300])
def test_embedding_parallel(dtype, v):
    """Past the parallel threshold: rows gathered in chunks, and the scatter-add split
    over rows of dw, each chunk zeroing its own rows and adding its indices' rows."""
    rng = np.random.default_rng(v)
    n, c = 1500, 48
    idx = rng.integers(0, v, size=n)
    idx[:5] = v - 1  # the last row, repeated
    w = arr(rng, (v, c), dtype)
    close(*both("embedding_forward", idx, w), dtype)
    dout = arr(rng, (n, c), dtype)
    close(*both("embedding_backward", dout, idx, v), dtype, scale=n + 1)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(shape=st.lists(dims, min_size=1, max_size=3), p=st.floats(0.0, 0.9), seed=seeds)
def test_dropout(dtype, shape, p, seed):
    rng = np.random.default_rng(seed)
    x = arr(rng, tuple(shape), dtype, 1, contiguous=False)
    u = rng.random(tuple(shape), dtype=dtype)
    (o1, k1), (o2, k2) = both("dropout_forward", x, u, p)
    close(o1, o2, dtype)
    np.testing.assert_array_equal(k1, k2)
    close(*both("dropout_backward", x, k1, p), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(
    n=st.integers(1, 70000), wd=st.sampled_from([0.0, 0.1]), step=st.integers(1, 1000), seed=seeds
)
def test_adamw(dtype, n, wd, step, seed):
    rng = np.random.default_rng(seed)
    state = [rng.standard_normal(n).astype(dtype) for _ in range(3)]
    state[2] = np.abs(state[2])  # v >= 0
    grad = arr(rng, (n,), dtype, 1, contiguous=False)
    copies = [[a.copy() for a in state] for _ in range(2)]
    for backend, (p, m, v) in zip(("numpy", "numba"), copies):
        K.get("adamw_update", backend)(p, grad, m, v, 1e-3, 0.9, 0.95, 1e-8, wd, step)
    for a, b in zip(*copies):
        close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_kernels_on_the_parallel_path(dtype):
    """Arrays large enough to be split across threads, with a length no chunk divides."""
    rng = np.random.default_rng(0)
    shape = (401, 503)
    x, dy = arr(rng, shape, dtype, 3.0), arr(rng, shape, dtype, 1, contiguous=False)
    y = np.maximum(x, 0)
    close(*both("relu_forward", x), dtype)
    close(*both("relu_backward", dy, y), dtype)
    for kind in ("tanh", "none"):
        close(*both("gelu_forward", x, kind), dtype, 3)
        close(*both("gelu_backward", dy, x, kind), dtype, 3)
    u = rng.random(shape, dtype=dtype)
    (o1, k1), (o2, k2) = both("dropout_forward", x, u, 0.2)
    close(o1, o2, dtype)
    np.testing.assert_array_equal(k1, k2)
    close(*both("dropout_backward", dy, k1, 0.2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_kernels_and_attention_on_both_paths(dtype):
    """Each row kernel and attention runs serially on small inputs and in parallel tasks
    on large ones (_jit.PAR_MIN); both paths must agree with the reference."""
    from npllm.kernels._jit import PAR_MIN, n_chunks

    rng = np.random.default_rng(1)
    for rows, cols in [(3, 5), (401, 97)]:
        assert bool(n_chunks(rows, rows * cols)) == (rows * cols >= PAR_MIN)
        x, dy = arr(rng, (rows, cols), dtype, 3.0), arr(rng, (rows, cols), dtype)
        for name in ("softmax", "log_softmax"):
            y, y2 = both(f"{name}_forward", x)
            close(y, y2, dtype, 3)
            close(*both(f"{name}_backward", dy, y), dtype, cols)
        w, b = arr(rng, (cols,), dtype), arr(rng, (cols,), dtype)
        (o1, m1, r1), (o2, m2, r2) = both("layernorm_forward", x, w, b, 1e-5)
        close(o1, o2, dtype, 10)
        for r, g in zip(*both("layernorm_backward", dy, x, m1, r1, w)):
            close(r, g, dtype, 10 * rows)
        targets = rng.integers(-1, cols, size=rows)
        (l1, lse1), (l2, lse2) = both("cross_entropy_forward", x, targets, -1)
        close(l1, l2, dtype, 3)
        close(*both("cross_entropy_backward", np.asarray(1.0, dtype), x, targets, lse1, -1), dtype)
    for shape in [(1, 2, 3, 4), (2, 3, 64, 32)]:
        q, k, v, do = (arr(rng, shape, dtype) for _ in range(4))
        (o1, a1), (o2, a2) = both("attention_forward", q, k, v, True)
        close(o1, o2, dtype, 3)
        for r, g in zip(*both("attention_backward", do, q, k, v, a1, True)):
            close(r, g, dtype, 10)
        b, nh, t, hs = shape
        qkv, dy = arr(rng, (b, t, 3 * nh * hs), dtype), arr(rng, (b, t, nh * hs), dtype)
        (y1, a1, _), (y2, a2, _) = both("attention_qkv_forward", qkv, nh, True, 0)
        close(y1, y2, dtype, 3)
        close(*both("attention_qkv_backward", dy, qkv, a1, nh, True), dtype, 10)


@pytest.mark.parametrize("out_f,in_f", [(3, 3), (7, 3), (3, 7), (1, 1), (65, 128), (128, 128)])
def test_linear_weight_gradient_in_every_orientation(out_f, in_f):
    """The BLAS weight gradient picks its GEMM orientation by shape (and splits square
    ones); every branch gives dout.T @ x."""
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((11, in_f)), rng.standard_normal((11, out_f))
    w = rng.standard_normal((out_f, in_f))
    _, dw, _ = K.get("linear_backward", "numpy")(dout, x, w, False, True, False)
    assert dw.shape == (out_f, in_f) and dw.flags.c_contiguous
    np.testing.assert_allclose(dw, dout.T @ x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(shape=st.lists(st.integers(1, 300), min_size=1, max_size=3), seed=seeds)
def test_add_and_the_clipping_passes(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    a, b = arr(rng, tuple(shape), dtype), arr(rng, tuple(shape), dtype)
    y, y2 = both("add", a, b)
    assert np.array_equal(y, y2) and y2.dtype == dtype  # one IEEE addition each: exact
    x = a.reshape(-1)
    s, s2 = both("sum_squares", x)
    assert s2 == pytest.approx(s, rel=1e-12)
    c, c2 = x.copy(), x.copy()
    K.get("scale_in_place", "numpy")(c, 0.37)
    K.get("scale_in_place", "numba")(c2, 0.37)
    assert np.array_equal(c, c2)


def test_the_clipping_passes_run_in_chunks_with_the_same_result():
    # 2**20 elements: on the pool, in run's fixed chunks (partials added in chunk order)
    x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    s = K.get("sum_squares", "numba")(x)
    assert s == pytest.approx(float(np.sum(x.astype(np.float64) ** 2)), rel=1e-12)
    assert K.get("sum_squares", "numba")(x) == s
    y = x.copy()
    K.get("scale_in_place", "numba")(y, 0.5)
    assert np.array_equal(y, x * np.float32(0.5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_many_is_adamw_on_each_parameter(dtype):
    from npllm.kernels.adamw import Spans

    rng = np.random.default_rng(0)
    shapes = [(300, 70), (0,), (5,), (1,), (129, 257)]  # chunks cross parameter borders
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    for backend in ("numba", "numpy"):
        ones = [p.copy() for p in start]  # updated one call a parameter
        manys = [p.copy() for p in start]  # updated all in one call
        spans = Spans(manys)
        n = spans.size
        m, v = np.zeros(n, dtype), np.zeros(n, dtype)
        ms = [np.zeros(s, dtype) for s in shapes]
        vs = [np.zeros(s, dtype) for s in shapes]
        for step in (1, 2, 3):
            g = rng.standard_normal(n).astype(dtype)
            K.get("adamw_update_many", backend)(spans, g, m, v, 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
            for k, p in enumerate(ones):
                a, b = spans.starts[k], spans.starts[k + 1]
                gk = g[a:b].reshape(p.shape)
                K.get("adamw_update", backend)(
                    p, gk, ms[k], vs[k], 1e-2, 0.9, 0.95, 1e-8, 0.1, step
                )
        for k in range(len(shapes)):  # the same kernel loop on each piece: the same bits
            a, b = spans.starts[k], spans.starts[k + 1]
            assert np.array_equal(manys[k], ones[k])
            assert np.array_equal(m[a:b], ms[k].reshape(-1))
            assert np.array_equal(v[a:b], vs[k].reshape(-1))


def test_adamw_many_refuses_what_it_cannot_update():
    from npllm.errors import ShapeError
    from npllm.kernels.adamw import Spans

    p = np.zeros((4, 6), np.float32)
    with pytest.raises(ShapeError, match="C-contiguous"):
        Spans([p[:, ::2]])
    with pytest.raises(ShapeError, match="one floating-point dtype"):
        Spans([p, p.astype(np.float64)])
    spans = Spans([p])
    z = np.zeros(24, np.float32)
    assert spans.holds([p]) and not spans.holds([p.copy()])
    with pytest.raises(ShapeError, match=r"\(24,\) float32"):
        K.adamw_update_many(spans, z[:10], z, z, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
