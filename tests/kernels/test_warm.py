"""A cold start (`npllm.kernels._warm`): with an empty Numba cache, the parallel drivers are
compiled by a helper process while the first steps run their chunks one after the other;
those chunks give what the driver gives, and the training the same numbers as a process
that compiles its drivers itself (NPLLM_WARM=0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from npllm.kernels import _jit, _warm

SCRIPT = textwrap.dedent(
    """
    import json, time
    import numpy as np
    import numba
    from npllm.gpt import GPT, GPTConfig
    from npllm.kernels import _warm
    from npllm.optim import clip_grad_norm
    # big enough that every kernel of the step runs in parallel chunks (work >= PAR_MIN)
    c = GPTConfig(vocab_size=65, block_size=64, n_layer=1, n_head=4, n_embd=128, dropout=0.1)
    model = GPT(c, seed=0)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    data = np.random.default_rng(0).integers(0, 65, size=(8, 65))
    losses, serial_steps = [], 0
    for i in range(4):
        _, loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.data))
        serial_steps += any(s == _warm._PENDING for s in _warm._state.values())
        while i == 0 and any(s == _warm._PENDING for s in _warm._state.values()):
            time.sleep(0.2)  # let the helper finish, so later steps take the drivers
            for k in list(_warm._state):
                _warm.use_driver(k, None, ())
    weights = float(sum(np.abs(p.data).sum() for p in model.parameters()))
    print(json.dumps({"losses": losses, "weights": weights, "serial_steps": serial_steps,
                      "asked": len(_warm._state), "done": sorted(_warm._done),
                      "threads": numba.get_num_threads()}))
    """
)


def _run(cache: str, **env: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, "NUMBA_CACHE_DIR": cache, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _drivers(cache) -> list[str]:
    return sorted(p.name for p in cache.rglob("*_chunks.*.nbi"))


def test_the_serial_chunks_equal_the_parallel_driver(monkeypatch):
    """One kernel with per-chunk partial sums (layernorm's backward: dw, db per chunk),
    run through `_jit.run` once while `_warm` says the driver is not ready, once with it."""
    from npllm import kernels

    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 128)).astype(np.float32)
    w, b = rng.standard_normal(128).astype(np.float32), np.zeros(128, np.float32)
    dout = rng.standard_normal((512, 128)).astype(np.float32)
    _, mean, rstd = kernels.get("layernorm_forward", "numba")(x, w, b, 1e-5)
    results = []
    for ready in (False, True):
        monkeypatch.setattr(_warm, "use_driver", lambda k, d, a, ready=ready: ready)
        results.append(kernels.get("layernorm_backward", "numba")(dout, x, mean, rstd, w))
    for got, want in zip(results[0], results[1]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    assert _jit.n_chunks(512, 512 * 128) > 1  # the case is parallel, not serial


def test_a_cold_process_has_its_drivers_compiled_aside(tmp_path):
    cache = tmp_path / "numba-cache"
    cold = _run(str(cache))
    if cold["threads"] < 2 or (os.cpu_count() or 1) < 2:
        pytest.fail("this test needs two cores and two Numba threads (CI has them)")
    # the first step ran serially while the helper compiled the drivers it asked for
    assert cold["serial_steps"] >= 1
    assert cold["asked"] >= 8 and len(cold["done"]) >= 8, cold
    assert len(_drivers(cache)) >= 8  # the helper wrote them to the cache
    # with the cache warm: no helper, no serial step
    warm = _run(str(cache))
    assert warm["serial_steps"] == 0 and warm["done"] == []
    # the same training as compiling the drivers in this process (a process that loads a
    # kernel from the cache may round differently in the last bit: a tolerance, not ==)
    off = _run(str(tmp_path / "other-cache"), NPLLM_WARM="0")
    assert off["serial_steps"] == 0 and off["done"] == []
    assert len(_drivers(tmp_path / "other-cache")) >= 8  # compiled in the process
    np.testing.assert_allclose(cold["losses"], off["losses"], rtol=1e-6)
    np.testing.assert_allclose(cold["weights"], off["weights"], rtol=1e-6)
