"""Run under `mpiexec -n N python collectives.py`: checks World and GradBuffer on every
rank (an AssertionError fails the job: the test reads the exit code)."""

from __future__ import annotations

import numpy as np

from npllm.autograd import Tensor
from npllm.distributed import GradBuffer, init

world = init()
N, r = world.size, world.rank
assert N >= 2, N

# sums and broadcast
a = np.full(5, r + 1, np.float32)
assert np.array_equal(world.allreduce(a), np.full(5, N * (N + 1) / 2, np.float32))
b = np.full(3, r, np.int64)
assert np.array_equal(world.broadcast(b), np.zeros(3, np.int64))
got = world.mean_losses({"a": [float(r)], "b": [1.0, 2.0 * r]}, 2 * N, stopped=False)
assert got == {"a": (N - 1) / 4, "b": (N + N * (N - 1)) / (2 * N)}, got
assert world.mean_losses({"a": [1.0]}, N, stopped=r == N - 1) is None

# parameters start as rank 0's
rng = np.random.default_rng(r)
params = [
    Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)
    for s in [(7, 3), (3,), (300, 40), (1,)]
]
world.broadcast_parameters(params)
rng0 = np.random.default_rng(0)
for p, s in zip(params, [(7, 3), (3,), (300, 40), (1,)]):
    assert np.array_equal(p.data, rng0.standard_normal(s).astype(np.float32))

# the flat buffer: several buckets, grads as views, scalars carried along
assert len(world.grad_buffer(params).buckets) == 1  # 48 kB: under one default bucket
buf = GradBuffer(params, world, extras=2, bucket_bytes=64)
assert len(buf.buckets) == 3, len(buf.buckets)  # (1,)+(300, 40) | (3,)+(7, 3) | extras
assert buf.nbytes == (21 + 3 + 12000 + 1 + 2) * 4
for _step in range(2):
    buf.attach()
    for p in params:
        assert np.shares_memory(p.grad, buf.flat) and not p.grad.any()
    for k, p in enumerate(params):
        p.grad += np.full(p.shape, (r + 1) * (k + 1), np.float32)
    params[1].grad = np.full(3, r + 10, np.float32)  # an engine that replaced .grad
    loss, flag = buf.allreduce(0.5 * (r + 1), float(r == 0))
    assert loss == 0.5 * N * (N + 1) / 2 and flag == 1.0
    tri = N * (N + 1) / 2
    for k, p in enumerate(params):
        want = (N * 10 + N * (N - 1) / 2) if k == 1 else tri * (k + 1)
        assert np.array_equal(p.grad, np.full(p.shape, want, np.float32)), (k, p.grad)
print(f"rank {r} of {N}: ok, threads {world.threads}")
