"""The backend switch: `use` (call and context manager), per-kernel DEFAULTS in auto
mode, and the NPLLM_KERNELS environment variable."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

from npllm import kernels as K
from npllm.errors import ConfigError


def test_every_kernel_has_both_backends():
    for name in K.names():
        assert callable(K.get(name, "numpy")) and callable(K.get(name, "numba"))
        assert callable(getattr(K, name))


def test_each_kernel_name_is_its_active_implementation():
    # no dispatcher in between: `K.layernorm_forward` is the function `grep "def
    # layernorm_forward"` finds (layernorm_forward_numpy or _numba), rebound by `use`
    for mode in ("numpy", "numba"):
        with K.use(mode):
            for name in K.names():
                impl = getattr(K, name)
                assert impl is K.get(name, mode) and impl.__name__ == f"{name}_{mode}"
                assert f"def {name}_{mode}(" in inspect.getsource(inspect.getmodule(impl))


def test_use_switches_and_restores():
    start = K.backend()
    with K.use("numpy"):
        assert K.get("softmax_forward") is K.get("softmax_forward", "numpy")
        with K.use("numba"):
            assert K.backend_of("linear_forward") == "numba"
            assert K.get("linear_forward") is K.get("linear_forward", "numba")
        assert K.backend() == "numpy"
    assert K.backend() == start


def test_auto_takes_the_measured_default_per_kernel(monkeypatch):
    monkeypatch.setitem(K.DEFAULTS, "softmax_forward", "numpy")
    with K.use("auto"):
        assert K.get("softmax_forward") is K.get("softmax_forward", "numpy")
        assert K.backend_of("softmax_forward") == "numpy"
        assert K.backend_of("linear_forward") == K.DEFAULTS.get("linear_forward", "numba")


def test_dispatchers_follow_the_switch(monkeypatch):
    calls = []
    monkeypatch.setitem(K._REGISTRY["relu_forward"], "numpy", lambda x: calls.append(x) or x)
    with K.use("numpy"):
        K.relu_forward(np.ones(2))
    assert len(calls) == 1


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="numba"):
        K.use("cuda")


def test_environment_variable_sets_the_starting_mode():
    code = "import npllm.kernels as K; print(K.backend())"
    env = {**os.environ, "NPLLM_KERNELS": "numpy"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "numpy", out.stderr
