"""Cold start: the parallel drivers compiled by a helper process while this one goes on.

A kernel's parallel driver (`_jit.parallel`) costs about a second to compile, twice its
serial kernel, and a first training step needs about fifteen of them (docs/performance.md,
"Cold start"). When `_jit.run` first needs a driver that the on-disk cache does not hold,
it asks a helper process (started then, one per process, fed through a pipe) to compile
it for the call's argument types, and meanwhile runs the call's chunks one after the
other on this thread: the same chunks as the driver, so the same partial sums in the
same order (tests/kernels/test_warm.py).
Once the helper has written the driver to the cache, `run` uses it (loading it from the
cache). The first step then compiles only serial kernels here while the drivers compile
on the other core.

Off when the cache already holds a driver, with one core or one Numba thread (MPI ranks),
under `NPLLM_WARM=0`, or when anything about the helper fails (then `run` compiles the
driver itself, as without this module). The helper ends with this process, or after
`IDLE` seconds without a request.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

_READY, _PENDING = 1, 2
_state: dict[Any, int] = {}  # kernel -> _READY (use the driver) or _PENDING (helper at it)
_done: set[str] = set()  # kernels the helper reported compiled (or failed: compile here)
_helper: subprocess.Popen | None = None
_off = os.environ.get("NPLLM_WARM", "1") == "0"
IDLE = 30.0  # seconds without a request after which the helper ends


def _name(kernel: Any) -> str:
    return f"{kernel.__module__}:{kernel.__name__}"


def _cold(driver: Any) -> bool:
    """True when the on-disk cache holds no version of `driver` (its index is missing)."""
    return not Path(driver._cache._cache_file._index_path).exists()


def _start() -> subprocess.Popen:
    root = str(Path(__file__).resolve().parents[2])  # the npllm this process imported
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from npllm.kernels._warm import helper; helper()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )

    def read() -> None:  # each line the helper prints names a kernel it is done with
        for line in proc.stdout:  # type: ignore[union-attr]
            _done.add(line.decode().strip())
        _done.add("*")  # the helper ended: whatever is pending compiles here

    threading.Thread(target=read, name="npllm-warm", daemon=True).start()
    atexit.register(proc.kill)  # its cache writes are atomic; what it had not done is redone
    return proc


def use_driver(kernel: Any, driver: Any, args: tuple) -> bool:
    """Whether `run` may call `driver` now; False: run the chunks serially, the helper
    is compiling it. The first call per kernel decides; later ones cost a dict look-up."""
    global _helper, _off
    state = _state.get(kernel)
    if state == _READY:
        return True
    if state == _PENDING:
        if _name(kernel) in _done or "*" in _done:
            _state[kernel] = _READY
            return True
        return False
    _state[kernel] = _READY
    if _off:
        return True
    try:
        import numba

        if numba.get_num_threads() < 2 or (os.cpu_count() or 1) < 2 or not _cold(driver):
            return True
        from numba import typeof, types

        sig = (typeof(args), types.int64, types.int64)
        if _helper is None or _helper.poll() is not None:  # none yet, or it ended idle
            _done.discard("*")
            _helper = _start()
        message = pickle.dumps((kernel.__module__, kernel.__name__, sig))
        _helper.stdin.write(len(message).to_bytes(8, "little") + message)  # type: ignore[union-attr]
        _helper.stdin.flush()  # type: ignore[union-attr]
    except Exception:  # never worse than compiling here
        _off = True
        return True
    _state[kernel] = _PENDING
    return False


def helper() -> None:
    """The helper process: compile each requested driver (module, kernel name, signature)
    into the cache and print the kernel's name; end at the end of input."""
    import importlib

    from npllm.kernels._jit import parallel

    fd, parent = sys.stdin.fileno(), os.getppid()

    def read(n: int) -> bytes:  # unbuffered, so that select sees every byte not yet read
        out = b""
        while len(out) < n:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                break
            out += chunk
        return out

    while True:
        try:
            if not select.select([fd], [], [], IDLE)[0]:
                return  # nothing asked for a while: the parent starts a new one if need be
            size = read(8)
            if len(size) < 8 or os.getppid() != parent:  # the parent is gone: so is the need
                return
            module, name, sig = pickle.loads(read(int.from_bytes(size, "little")))
            try:
                parallel(getattr(importlib.import_module(module), name)).compile(sig)
            finally:  # done or failed: either way the parent stops waiting for it
                print(f"{module}:{name}", flush=True)
        except (KeyboardInterrupt, BrokenPipeError):
            return
