"""Fixtures of the browser tests: Debian's headless Chromium and its driver (installed here
with apt-get when missing, since CI starts on a fresh machine), a tiny chat model trained in
the test, `npllm serve` on it in a real process on 127.0.0.1, and one Selenium session.

Screenshots go to `artifacts/web/` at the top of the repository (git-ignored), or to
`$NPLLM_ARTIFACTS/web/`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from npllm import cli

from ..cli.conftest import TINY, corpus_file, data_dir  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
APT_TIMEOUT = 900  # seconds for apt-get update and install together
BLOCK_SIZE = 96  # the test model's context window


def _install_chromium() -> None:
    """Installs Debian's chromium and chromium-driver when either is missing; fails (never
    skips) with the reason when it cannot."""
    if Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file():
        return
    if shutil.which("apt-get") is None:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: no apt-get here")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    deadline = time.monotonic() + APT_TIMEOUT
    for cmd in (
        ["apt-get", "update", "-qq"],
        # waits for another apt (the lock) rather than failing at once
        ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300"]
        + ["chromium", "chromium-driver"],
    ):
        try:
            r = subprocess.run(
                sudo + cmd,
                env=env,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(cmd)}` took over {APT_TIMEOUT} s: Chromium not installed")
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
            pytest.fail(f"`{' '.join(cmd)}` failed ({r.returncode}): " + " | ".join(tail))
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail(f"apt-get installed chromium, but {CHROMIUM} or {CHROMEDRIVER} is absent")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    base = Path(os.environ.get("NPLLM_ARTIFACTS", ROOT / "artifacts"))
    out = base / "web"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory) -> Path:
    """A tiny chat model trained for a few seconds: it answers in chat-demo's words, if
    not always sensibly; the tests check the page, not the model."""
    d = tmp_path_factory.mktemp("webrun")
    prep = ["prepare", "--corpus", "chat-demo", "--size", "300", "--out", str(d / "data")]
    assert cli.main([*prep, "--tokenizer", "bpe", "--vocab-size", "300"]) == 0
    args = ["train", "--data", str(d / "data"), "--out", str(d / "run"), *TINY]
    args += ["--block-size", str(BLOCK_SIZE), "--max-iters", "60", "--learning-rate", "3e-3"]
    assert cli.main(args) == 0
    return d / "run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(run: Path, log: Path, *flags: str):
    """`npllm serve --run RUN FLAGS` in its own process on a free port of 127.0.0.1;
    yields its base URL once /health answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "npllm.cli", "serve", "--run", str(run)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *flags]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a cold Numba cache compiles the decoder first
        while True:
            if proc.poll() is not None:
                pytest.fail(f"npllm serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"npllm serve did not answer /health in 120 s: {log.read_text()[-2000:]}"
                )
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(chat_run, tmp_path_factory):
    """The chat model served; yields the base URL. With a stream interval of 0 each
    step's token goes out at once: the tiny model writes a whole reply within the default
    20 ms, which would reach the page as two chunks, and the page tests watch tokens
    arrive one by one (the interval itself is tested in tests/serve)."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serving(chat_run, log, "--model-name", "pip-tiny", "--stream-interval", "0") as url:
        yield url


API_KEY = "sesame"


@pytest.fixture(scope="session")
def text_server(data_dir, tmp_path_factory):  # noqa: F811
    """A text model (no chat template) trained for a few steps, served behind an API key."""
    d = tmp_path_factory.mktemp("webtext")
    args = ["train", "--data", str(data_dir), "--out", str(d / "run"), *TINY, "--max-iters", "5"]
    assert cli.main(args) == 0
    with serving(d / "run", d / "serve.log", "--api-key", API_KEY) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    _install_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,860")
    # the performance log carries the requests as sent (Network.requestWillBeSent)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, server, artifacts, request):
    """The page freshly loaded (and connected to the server); a screenshot of it is saved
    under the test's name when the test ends, passed or failed."""
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    browser.set_window_size(1280, 860)
    browser.get(server + "/")
    browser.get_log("performance")  # drop what the page load logged
    wait_for(browser, lambda d: d.find_element("id", "status").get_attribute("data-state") == "ok")
    yield browser
    browser.save_screenshot(str(artifacts / f"{request.node.name}.png"))


def wait_for(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def sent_requests(driver, path: str) -> list[dict]:
    """The JSON bodies of the POSTs to `path` the browser sent since the last call."""
    bodies = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") != "Network.requestWillBeSent":
            continue
        req = msg["params"]["request"]
        if req["method"] == "POST" and req["url"].endswith(path):
            data = req.get("postData")
            if data is None:  # Chromium leaves larger bodies out of the event
                rid = msg["params"]["requestId"]
                data = driver.execute_cdp_cmd("Network.getRequestPostData", {"requestId": rid})
                data = data["postData"]
            bodies.append(json.loads(data))
    return bodies
