"""Fused softmax + cross-entropy over the rows of (N, V) logits with integer targets,
mean over the rows whose target is not `ignore_index`.

    cross_entropy_forward(logits, targets, ignore_index) -> (loss, lse)
        lse[i] = logsumexp(logits[i]); loss = mean_{i kept} (lse[i] - logits[i, targets[i]])
        loss is a 0-d array in the logits' dtype; 0 when every target is ignored.
    cross_entropy_backward(dloss, logits, targets, lse, ignore_index) -> dlogits
        dlogits[i] = dloss * (exp(logits[i] - lse[i]) - onehot(targets[i])) / count,
        zero for ignored rows (and everywhere when count == 0).

Only the (N,) logsumexp is kept between the passes, not the (N, V) probabilities: the
backward recomputes exp(logits - lse) in the same sweep that writes dlogits. Targets must
be in [0, V) or equal to ignore_index (checked by `F.cross_entropy`).
"""

from __future__ import annotations

import numpy as np

from npllm.kernels._jit import fexp, fmax, jit, run

KERNELS = ("cross_entropy_forward", "cross_entropy_backward")


# ---- NumPy reference -------------------------------------------------------------------
def cross_entropy_forward_numpy(logits, targets, ignore_index):
    mx = logits.max(axis=-1)
    lse = mx + np.log(np.exp(logits - mx[:, None]).sum(axis=-1))
    keep = targets != ignore_index
    count = int(keep.sum())
    if count == 0:
        return np.zeros((), logits.dtype), lse
    rows = np.nonzero(keep)[0]
    losses = lse[rows] - logits[rows, targets[rows]]
    return np.asarray(losses.sum() / logits.dtype.type(count), dtype=logits.dtype), lse


def cross_entropy_backward_numpy(dloss, logits, targets, lse, ignore_index):
    # loss = mean(lse - logits[target]), d lse / d logits = softmax(logits)
    #   =>  dlogits = dloss * (softmax - onehot(target)) / count, 0 on ignored rows
    keep = targets != ignore_index
    count = int(keep.sum())
    if count == 0:
        return np.zeros_like(logits)
    scale = logits.dtype.type(dloss) / logits.dtype.type(count)
    d = np.exp(logits - lse[:, None])
    rows = np.nonzero(keep)[0]
    d[rows, targets[rows]] -= 1
    d *= scale * keep[:, None]
    return d


# ---- Numba -----------------------------------------------------------------------------
# Serial kernels over rows lo..hi, run by `_jit.run` (chunks of rows in parallel for large
# inputs).
@jit
def _ce_fwd(logits, targets, ignore_index, lse, losses, lo, hi):
    # lse = log(sum(exp(logits - mx))) + mx, loss_i = lse_i - logits[i, target_i]
    v = logits.shape[1]
    t = logits.dtype.type
    for i in range(lo, hi):
        mx = logits[i, 0]
        for j in range(v):
            mx = fmax(mx, logits[i, j])
        s = t(0)
        for j in range(v):
            s += fexp(logits[i, j] - mx)
        lse[i] = mx + np.log(s)
        tg = targets[i]
        losses[i] = t(0) if tg == ignore_index else lse[i] - logits[i, tg]


@jit
def _ce_bwd(logits, targets, ignore_index, lse, scale, d, lo, hi):
    # loss = mean_kept(lse - logits[target])  =>  dlogits = (softmax - onehot(target)) * scale,
    # scale = dloss / count, softmax = exp(logits - lse); ignored rows get zeros
    v = logits.shape[1]
    t = logits.dtype.type
    for i in range(lo, hi):
        tg = targets[i]
        if tg == ignore_index:
            for j in range(v):
                d[i, j] = t(0)
            continue
        m = lse[i]
        for j in range(v):
            d[i, j] = fexp(logits[i, j] - m) * scale
        d[i, tg] -= scale


def cross_entropy_forward_numba(logits, targets, ignore_index):
    logits = np.ascontiguousarray(logits)
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    n = logits.shape[0]
    lse = np.empty(n, logits.dtype)
    losses = np.empty(n, logits.dtype)
    run(_ce_fwd, (logits, targets, ignore_index, lse, losses), n, logits.size)
    count = int(np.count_nonzero(targets != ignore_index))
    if count == 0:
        return np.zeros((), logits.dtype), lse
    return np.asarray(losses.sum() / logits.dtype.type(count), dtype=logits.dtype), lse


def cross_entropy_backward_numba(dloss, logits, targets, lse, ignore_index):
    logits = np.ascontiguousarray(logits)
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    count = int(np.count_nonzero(targets != ignore_index))
    if count == 0:
        return np.zeros_like(logits)
    d = np.empty_like(logits)
    scale = logits.dtype.type(dloss) / logits.dtype.type(count)
    lse = np.ascontiguousarray(lse)
    run(_ce_bwd, (logits, targets, ignore_index, lse, scale, d), logits.shape[0], logits.size)
    return d
