"""Fixtures for the whole suite."""

from __future__ import annotations

import signal

import pytest


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_raises():
    """Ctrl-C tests send a real SIGINT to this process. A shell that starts the suite in the
    background (`cmd &`) makes SIGINT ignored; give it back Python's usual handler so those
    tests check npllm, not how the suite was launched."""
    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)
