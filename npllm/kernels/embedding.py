"""Embedding lookup and its backward, the scatter-add of repeated indices.

    embedding_forward(idx, w) -> w[idx]                      idx (N,) int64, w (V, C)
    embedding_backward(dout, idx, num_embeddings) -> dw      dout (N, C), dw (V, C)
        dw[idx[n]] += dout[n] for every n (repeats accumulate)

Indices are checked to lie in [0, V) by `F.embedding` before either kernel runs.
"""

from __future__ import annotations

import numpy as np

from npllm.kernels._jit import jit

KERNELS = ("embedding_forward", "embedding_backward")


# ---- NumPy reference -------------------------------------------------------------------
def embedding_forward_numpy(idx, w):
    return w[idx]


def embedding_backward_numpy(dout, idx, num_embeddings):
    # out[n] = w[idx[n]]  =>  dw[v] = sum of dout[n] over the n with idx[n] = v: a
    # scatter-add, repeated indices accumulate
    dw = np.zeros((num_embeddings, dout.shape[-1]), dtype=dout.dtype)
    np.add.at(dw, idx, dout)
    return dw


# ---- Numba -----------------------------------------------------------------------------
@jit
def _gather(idx, w, out):
    c = w.shape[1]
    for n in range(idx.shape[0]):
        src, dst = w[idx[n]], out[n]
        for j in range(c):
            dst[j] = src[j]


@jit
def _scatter_add(dout, idx, dw):
    # serial: repeated indices would race under prange, and N*C is small next to a GEMM
    c = dout.shape[1]
    for n in range(idx.shape[0]):
        row = idx[n]
        for j in range(c):
            dw[row, j] += dout[n, j]


def embedding_forward_numba(idx, w):
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    w = np.ascontiguousarray(w)
    out = np.empty((idx.shape[0], w.shape[1]), dtype=w.dtype)
    _gather(idx, w, out)
    return out


def embedding_backward_numba(dout, idx, num_embeddings):
    dout = np.ascontiguousarray(dout)
    dw = np.zeros((num_embeddings, dout.shape[-1]), dtype=dout.dtype)
    _scatter_add(dout, np.ascontiguousarray(idx, dtype=np.int64), dw)
    return dw
