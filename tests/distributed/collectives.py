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

# ZeRO-1: sharded AdamW moments give the plain AdamW step, and a whole state dict
import copy  # noqa: E402

from npllm.distributed import ZeroAdamW  # noqa: E402
from npllm.optim import AdamW  # noqa: E402

shapes = [(7, 3), (3,), (300, 40), (1,)]
ref = [Tensor(np.full(s, 0.5, np.float32), requires_grad=True) for s in shapes]
own = copy.deepcopy(ref)
groups = lambda ps: [  # noqa: E731
    {"params": [ps[0], ps[2]], "weight_decay": 0.1},
    {"params": [ps[1], ps[3]], "weight_decay": 0.0},
]
plain = AdamW(groups(ref), lr=1e-2)
zero = ZeroAdamW(AdamW(groups(own), lr=1e-2), GradBuffer(own, world))
assert zero.state_bytes == 2 * 4 * (zero.hi - zero.lo)
assert abs(zero.hi - zero.lo - 12025 / N) <= 1
for step in range(3):
    zero.grads.attach()
    for k, (a, b) in enumerate(zip(ref, own)):
        g = np.random.default_rng([step, k]).standard_normal(a.shape).astype(np.float32)
        a.grad = g.copy()
        b.grad += g if r == 0 else 0 * g  # the ranks' gradients sum to g exactly
    zero.grads.allreduce()
    plain.step()
    zero.step()
    for a, b in zip(ref, own):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-6, atol=1e-7)
whole, want = zero.state_dict(), plain.state_dict()
if r == 0:
    assert whole["param_groups"] == want["param_groups"]
    for i, s in want["state"].items():
        assert whole["state"][i]["step"] == s["step"] == 3
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(whole["state"][i][name], s[name], rtol=1e-5, atol=1e-9)
again = ZeroAdamW(AdamW(groups(own), lr=1e-2), zero.grads)
again.load_state_dict(want)
assert again.steps == 3
np.testing.assert_allclose(again.exp_avg, zero.exp_avg, rtol=1e-6, atol=1e-12)
print(f"rank {r} of {N}: zero1 ok")

# ranks that disagree are refused on every rank
from npllm.errors import ConfigError  # noqa: E402

world.check_same("the configs", {"lr": 1e-3, "n": [1, 2]})
try:
    world.check_same("the configs", {"lr": 1e-3 if r == 0 else 2e-3})
    raise AssertionError("ranks that disagree were let through")
except ConfigError as e:
    assert "ranks [1" in str(e) and "same command" in str(e), e
print(f"rank {r} of {N}: check_same ok")
