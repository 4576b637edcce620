"""Fixtures of the server tests: a chat model trained here in seconds (it learns three
exchanges by heart, so its greedy replies are known), a text model with a random
BPE-free init, and real servers (uvicorn on 127.0.0.1, a free port, in a thread of this
process) over them, with and without an API key."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from npllm import cli
from npllm.gpt import GPT, GPTConfig
from npllm.runs import load_run
from npllm.serve import build_app
from npllm.tokenizers import CharTokenizer

# what the chat model learns: user message -> assistant reply
EXCHANGES = {
    "hi": "hello friend",
    "sky?": "the sky is blue",
    "count": "one two three",
    "json": '{"answer": "blue", "sure": true}',
    "list": "[1, 2]",
}
API_KEY = "sk-test-npllm"


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("servechat")
    with open(d / "chat.jsonl", "w") as f:
        for k in range(300):
            user, reply = list(EXCHANGES.items())[k % len(EXCHANGES)]
            msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    prep = ["prepare", "--corpus", str(d / "chat.jsonl"), "--chat", "--out", str(d / "data")]
    assert cli.main(prep) == 0
    flags = "--n-layer 1 --n-head 2 --n-embd 32 --block-size 64 --batch-size 8 --eval-iters 2"
    flags += " --eval-interval 150 --log-interval 50 --warmup-iters 5 --max-iters 200"
    flags += " --learning-rate 1e-2 --quiet"
    train = ["train", "--data", str(d / "data"), "--out", str(d / "run"), *flags.split()]
    assert cli.main(train) == 0
    return d / "run"


class Running:
    """A uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.engine = app.state.server.engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def healthy(self) -> bool:
        """The server answers /health: it keeps serving after whatever came before."""
        r = httpx.get(self.url + "/health", timeout=10)
        return r.status_code == 200 and r.json()["status"] == "ok"


@pytest.fixture(scope="session")
def chat_server(chat_run):
    loaded = load_run(chat_run)
    srv = Running(build_app(loaded.model, loaded.tokenizer, model_name="tiny-chat"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def text_server():
    """A text model (no chat template), random weights, an API key and a small body limit."""
    tok = CharTokenizer.from_text("abcdefghij klmnopqrstuvwxyz.\n")
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    app = build_app(
        GPT(config, seed=0), tok, model_name="tiny-text", api_key=API_KEY, max_body_bytes=4096
    )
    srv = Running(app)
    yield srv
    srv.stop()


def long_app(**options):
    """The app over a random text model with a long context (one character a token), named
    "long": generations that last a while. `options` go to build_app."""
    tok = CharTokenizer.from_text("abcdefghij klmnopqrstuvwxyz.\n")
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=2048, n_layer=3, n_head=4, n_embd=128)
    return build_app(GPT(config, seed=1), tok, model_name="long", max_batch=8, **options)


@pytest.fixture(scope="session")
def long_server():
    """`long_app` running: to watch batching, disconnects and /health while it works."""
    srv = Running(long_app())
    yield srv
    srv.stop()
