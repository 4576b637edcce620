"""Kernels, one module per family, each a Numba version beside a plain-NumPy reference
with the same signature, and the backend switch that picks between them.

Families: `matmul` (linear layer forward/backward; BLAS reference, BLAS in Numba's pool),
`softmax` (softmax, log-softmax), `layernorm`, `activations` (ReLU, GELU tanh/erf, and
the residual stream's addition), `crossentropy` (fused softmax + cross-entropy),
`attention` (causal SDPA), `embedding`, `dropout` and `adamw` (the fused optimizer
update, for one parameter or many a call, and gradient clipping's two passes); for the
Llama family `rmsnorm`, `swiglu` and `rope`; the quantized linear layers `int8` and
`int4`. `decode` (the fused
KV-cache decode step) sits beside them outside the switch, built from their serial loops.
`npllm.functional` calls every kernel through the names exported here, e.g.
`kernels.softmax_forward(x)`.

Backend switch:
- `use("numba")` / `use("numpy")` forces every kernel onto one backend (used by the tests
  and the benchmark); `use("auto")` (the default) takes, per kernel, the backend listed in
  `DEFAULTS`, which holds what `benchmarks/kernels.py` measured to be faster here.
- The environment variable `NPLLM_KERNELS` ("numba", "numpy" or "auto") sets the starting mode.
- `use` also works as a context manager that restores the previous mode:
  `with kernels.use("numpy"): ...`.
- `use` binds each kernel's name in this module to its active implementation, so
  `kernels.layernorm_forward` is `layernorm.layernorm_forward_numba` (or `_numpy`): no
  dispatcher between a caller and the kernel. Call kernels as `kernels.<name>(...)`;
  `from npllm.kernels import <name>` would keep the binding of import time.

Numba kernels compile lazily, on first call, and are cached on disk (`cache=True`), so
`import npllm.kernels` stays fast and only the first run after a change pays the compile.
Numba invalidates a cached function only when its own file changes, not when a helper it
inlines from `_jit.py` does; `_drop_stale_cache` below therefore clears the cache of this
folder whenever any kernel source changes. This mode and `DEFAULTS` are the only global
mutable state in npllm; the one process-wide setting it makes is glibc's malloc thresholds
(`_keep_freed_memory`, once, at import).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _drop_stale_cache() -> None:
    """Delete this folder's Numba cache (__pycache__/*.nbi, *.nbc) when the kernel sources
    differ from those it was built from. Best effort: a read-only install just keeps it."""
    here = Path(__file__).resolve().parent
    cache = here / "__pycache__"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py"))))
    stamp = cache / "npllm-kernels.sha256"
    try:
        if stamp.read_text() == digest.hexdigest():
            return
    except OSError:
        pass  # no stamp yet: whatever is cached has unknown provenance
    try:
        for f in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:
        pass


_drop_stale_cache()

_MMAP = 32 << 20  # glibc's largest allowed mmap threshold on 64-bit
_TRIM = 512 << 20


def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    A training step allocates and frees the same large arrays every time. By default glibc
    serves arrays past its mmap threshold with fresh mappings and trims the heap's free
    top back to the OS, so each step maps, page-faults and unmaps its activations again:
    about a quarter of a cpu-small step (docs/performance.md, "Memory"). With the thresholds
    raised, the second step reuses the first step's memory. The price is that up to
    `_TRIM` bytes of freed memory stay in the process. Applied once, only under glibc,
    and never when the user set any MALLOC_* variable or NPLLM_MALLOC=default."""
    if os.environ.get("NPLLM_MALLOC", "").strip().lower() == "default":
        return
    if any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, _MMAP)
    libc.mallopt(m_trim_threshold, _TRIM)


_keep_freed_memory()

from npllm.errors import ConfigError  # noqa: E402
from npllm.kernels import (  # noqa: E402
    activations,
    adamw,
    attention,
    attention_packed,
    crossentropy,
    dropout,
    embedding,
    int4,
    int8,
    layernorm,
    matmul,
    rmsnorm,
    rope,
    softmax,
    swiglu,
)

BACKENDS = ("numba", "numpy")
MODES = ("auto", *BACKENDS)

_FAMILIES = (
    matmul,
    softmax,
    layernorm,
    activations,
    crossentropy,
    attention,
    attention_packed,
    embedding,
    dropout,
    adamw,
    rmsnorm,
    swiglu,
    rope,
    int8,
    int4,
)

# Kernel name -> {"numpy": fn, "numba": fn}, collected from each family's `KERNELS` tuple:
# a family module defines `<name>_numpy` and `<name>_numba` for every name it lists.
_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {
    name: {b: getattr(mod, f"{name}_{b}") for b in BACKENDS}
    for mod in _FAMILIES
    for name in mod.KERNELS
}

# The faster backend per kernel, as measured by `npllm bench kernels` (benchmarks/RESULTS.md,
# "Kernels"): Numba for every kernel but those listed here (none at present; the linear
# layer's Numba version is BLAS run inside Numba's pool, see blas.py).
DEFAULTS: dict[str, str] = {}

_mode: str = "auto"
_active: dict[str, Callable[..., Any]] = {}


def _resolve(mode: str) -> dict[str, Callable[..., Any]]:
    return {
        name: impls[DEFAULTS.get(name, "numba") if mode == "auto" else mode]
        for name, impls in _REGISTRY.items()
    }


def _bind(mode: str) -> None:
    """Make `mode` current: every kernel name of this module becomes its implementation."""
    global _mode, _active
    _mode, _active = mode, _resolve(mode)
    globals().update(_active)


class use:
    """Select the kernel backend: "numba", "numpy" or "auto" (per-kernel `DEFAULTS`).
    Takes effect at once; as a context manager it restores the previous mode on exit."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ConfigError(
                f"unknown kernel backend {mode!r}; use one of {', '.join(MODES)} "
                "(in code via npllm.kernels.use, or the NPLLM_KERNELS environment variable)"
            )
        self._previous = _mode
        _bind(mode)

    def __enter__(self) -> use:
        return self

    def __exit__(self, *exc: object) -> None:
        _bind(self._previous)


def backend() -> str:
    """The current mode: "auto", "numba" or "numpy"."""
    return _mode


def backend_of(name: str) -> str:
    """Which backend kernel `name` runs on in the current mode."""
    return DEFAULTS.get(name, "numba") if _mode == "auto" else _mode


def get(name: str, backend: str | None = None) -> Callable[..., Any]:
    """The implementation of kernel `name` for `backend` (default: the active one)."""
    return _active[name] if backend is None else _REGISTRY[name][backend]


def names() -> list[str]:
    return list(_REGISTRY)


use(os.environ.get("NPLLM_KERNELS", "auto").strip().lower() or "auto")

__all__ = [
    "BACKENDS",
    "DEFAULTS",
    "MODES",
    "backend",
    "backend_of",
    "get",
    "names",
    "use",
    *_REGISTRY,
]
