"""`npllm serve` as a command: a real process serving a trained run (named after its
folder, on loopback), its int8 checkpoint with --quantized, the API key from the
environment, and one-line errors (exit 2) for a missing run or bad flags."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from npllm import cli
from tests.serve.conftest import EXCHANGES

NPLLM = [sys.executable, "-m", "npllm.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(run, *args, env=None):
    """Start `npllm serve`; returns (process, base url) once /health answers."""
    port = free_port()
    p = subprocess.Popen(
        [*NPLLM, "serve", "--run", str(run), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        assert p.poll() is None, p.communicate()[1]
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return p, url
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "npllm serve did not start"
        time.sleep(0.1)


def test_serve_a_run_in_a_real_process(chat_run):
    p, url = serve(chat_run)
    try:
        models = httpx.get(url + "/v1/models").json()["data"]
        assert [m["id"] for m in models] == [chat_run.name]
        assert models[0]["context_window"] == 64
        body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
        assert r["choices"][0]["message"]["content"] == EXCHANGES["hi"]
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert f"model '{chat_run.name}'" in err and "127.0.0.1" in err


def test_serve_the_int8_checkpoint_with_a_key_from_the_environment(chat_run):
    assert cli.main(["quantize", str(chat_run)]) == 0
    p, url = serve(chat_run, "--quantized", "--model-name", "q", env={"NPLLM_API_KEY": "k1"})
    try:
        body = {"model": "q", "messages": [{"role": "user", "content": "count"}], "temperature": 0}
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
        r = httpx.post(
            url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": "Bearer k1"},
            timeout=60,
        ).json()
        assert r["choices"][0]["message"]["content"] == EXCHANGES["count"]
    finally:
        p.terminate()
        p.communicate(timeout=30)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--run", "/nonexistent/run"], "/nonexistent/run"),
        (["--port", "70000"], "--port"),
        (["--max-batch", "0"], "--max-batch"),
        (["--stream-interval", "-1"], "--stream-interval"),
    ],
)
def test_bad_serve_input_is_one_line(chat_run, capsys, args, match):
    argv = ["serve", "--run", str(chat_run), *args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("npllm serve: error:") and match in err and "\n" not in err
