"""The page `npllm serve` serves at /, in headless Chromium against a real server and a
tiny model trained in the test: streamed replies with finish reason and usage, token
alternatives (hover, tap, keys), sampling parameters on the wire, stop mid-stream, server
errors, the context meter dropping old turns, completion mode, a phone-width layout."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from urllib.parse import urlparse

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from .conftest import API_KEY, BLOCK_SIZE, sent_requests, wait_for

CHIPS = ".tok[role=button]"
USAGE = re.compile(r"(\d+) prompt \+ (\d+) completion = (\d+) tokens")


def field(driver, id_: str, value) -> None:
    box = driver.find_element(By.ID, id_)
    box.clear()
    box.send_keys(str(value))


def send(driver, text: str) -> None:
    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def entries(driver, role: str = "assistant"):
    return driver.find_elements(By.CSS_SELECTOR, f"#chat-log li.msg.{role}")


def wait_done(driver, n: int, timeout: float = 60):
    """Waits for the n-th reply (1-based) to show its finish reason; returns its <li>."""

    def done(d):
        replies = entries(d)
        return len(replies) >= n and replies[n - 1].get_attribute("data-finish-reason")

    wait_for(driver, done, timeout)
    return entries(driver)[n - 1]


def throttle(driver, bytes_per_s: int) -> None:
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": bytes_per_s, "uploadThroughput": -1},
    )


# Records, at each change of the chat log, the time and the number of token chips of the
# last reply: the tokens of a streamed reply arrive in several changes, spread in time.
RECORD_CHIPS = """
window.chipLog = [];
if (!window.chipObserver) {
  window.chipObserver = new MutationObserver(() => {
    const replies = document.querySelectorAll("#chat-log li.msg.assistant");
    const last = replies[replies.length - 1];
    const n = last ? last.querySelectorAll(".tok[role=button]").length : 0;
    window.chipLog.push([performance.now(), n]);
  });
  const options = {childList: true, subtree: true};
  window.chipObserver.observe(document.getElementById("chat-log"), options);
}
"""


def percent(text: str) -> float:
    return 0.05 if text == "<0.1%" else float(text.rstrip("%"))


def ask(page, text: str, min_tokens: int = 3, tries: int = 4, before_send=None):
    """Sends `text` in a new conversation and waits for the reply; the tiny model ends
    some replies after a token or two, so a reply shorter than `min_tokens` is asked
    again (each try in a new conversation). Returns the finished reply's <li>."""
    for _ in range(tries):
        page.find_element(By.ID, "reset").click()
        if before_send is not None:
            before_send()
        send(page, text)
        reply = wait_done(page, 1)
        if len(reply.find_elements(By.CSS_SELECTOR, CHIPS)) >= min_tokens:
            return reply
    pytest.fail(f"{tries} replies each had fewer than {min_tokens} tokens")


def test_chat_streams_a_reply_with_finish_reason_and_usage(page):
    throttle(page, 6000)  # a few chunks a second, so that the stream is seen arriving
    field(page, "max_tokens", 40)
    record = lambda: page.execute_script(RECORD_CHIPS)  # noqa: E731
    reply = ask(page, "hi pip! how is the lamp?", before_send=record)
    log = [(t, n) for t, n in page.execute_script("return window.chipLog") if n > 0]
    assert len({n for _, n in log}) >= 3, f"the reply did not arrive token by token: {log}"
    assert log[-1][0] - log[0][0] > 200, f"the tokens arrived at once: {log}"  # ms
    meta = reply.find_element(By.CSS_SELECTOR, ".meta").text
    assert reply.get_attribute("data-finish-reason") in ("stop", "length"), meta
    assert re.search(r"finish: (stop|length)", meta), meta
    prompt, completion, total = map(int, USAGE.search(meta).groups())
    assert prompt > 0 and prompt + completion == total
    chips = reply.find_elements(By.CSS_SELECTOR, CHIPS)
    assert log[-1][1] == len(chips)
    # one chip per generated token (the end-of-turn token, counted in usage, is not shown)
    assert len(chips) <= completion <= len(chips) + 1
    assert "".join(c.text for c in chips).strip(), "no text in the reply"
    text = page.find_element(By.ID, "meter-text").text
    assert text == f"{total} / {BLOCK_SIZE} tokens"
    # the user's turn and the reply both stay in the log for the next turn
    assert [e.text for e in entries(page, "user")] == ["YOU\nhi pip! how is the lamp?"]


def test_token_alternatives_on_hover_tap_and_keys(page, artifacts):
    field(page, "top_logprobs", 4)
    reply = ask(page, "tell me about biscuit")
    chips = reply.find_elements(By.CSS_SELECTOR, CHIPS)
    pop = page.find_element(By.ID, "token-pop")
    assert not pop.is_displayed()

    ActionChains(page).move_to_element(chips[0]).perform()
    wait_for(page, lambda d: pop.is_displayed())
    rows = pop.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 4
    probs = [percent(r.find_element(By.CSS_SELECTOR, "td.p").text) for r in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.5
    # at temperature 0.8 with no top_k, the draw needs the whole distribution: not shown
    assert "draw not shown for temperature 0.8, top_k off, top_p 1" in pop.text
    assert {r.find_element(By.CSS_SELECTOR, "td.q").text for r in rows} == {"–"}
    rank = chips[0].get_attribute("data-rank")
    chosen = pop.find_elements(By.CSS_SELECTOR, "tr.chosen")
    if rank:
        assert f"rank {rank} of the 4 shown" in pop.text
        assert len(chosen) == 1 and rows.index(chosen[0]) == int(rank) - 1
    else:
        assert "not among the top 4" in pop.text and not chosen
    p = float(chips[0].get_attribute("data-p"))
    assert 0 < p <= 1
    # colour by probability: hue 25 (unlikely) .. 210 (certain)
    hue = page.execute_script("return arguments[0].style.getPropertyValue('--h')", chips[0])
    assert abs(int(hue) - (25 + 185 * p)) <= 1

    # tap pins it; arrow keys move to the next token; Escape closes
    ActionChains(page).move_by_offset(0, 300).perform()
    chips[1].click()
    wait_for(page, lambda d: chips[1].get_attribute("aria-expanded") == "true")
    chips[1].send_keys(Keys.ARROW_RIGHT)
    wait_for(page, lambda d: d.switch_to.active_element == chips[2])
    assert chips[2].get_attribute("aria-expanded") == "true" and pop.is_displayed()
    page.save_screenshot(str(artifacts / "token_alternatives_open.png"))
    chips[2].send_keys(Keys.ESCAPE)
    wait_for(page, lambda d: not pop.is_displayed())

    # with top_k 3 inside the 4 alternatives, the page shows what the draw was made from:
    # the top 3 renormalised at temperature 0.5, the 4th cut
    field(page, "top_k", 3)
    field(page, "temperature", 0.5)
    chip = ask(page, "tell me about biscuit", min_tokens=1).find_element(By.CSS_SELECTOR, CHIPS)
    ActionChains(page).move_to_element(chip).perform()
    wait_for(page, lambda d: pop.is_displayed())
    assert "drawn with temperature 0.5, top_k 3, top_p 1" in pop.text
    rows = pop.find_elements(By.CSS_SELECTOR, "tbody tr")
    model = [percent(r.find_element(By.CSS_SELECTOR, "td.p").text) for r in rows]
    draw = [r.find_element(By.CSS_SELECTOR, "td.q").text for r in rows]
    assert draw[3] == "cut" and abs(sum(percent(q) for q in draw[:3]) - 100) < 0.3
    weights = [m**2 for m in model[:3]]  # p^(1/T) at T = 0.5, renormalised
    for q, w in zip(draw[:3], weights):
        assert abs(percent(q) - 100 * w / sum(weights)) < 1.0, (model, draw)
    assert int(chip.get_attribute("data-rank") or 9) <= 3  # the draw never picks a cut token


def test_sampling_controls_are_sent_with_each_request(page):
    field(page, "temperature", 1.7)
    field(page, "top_k", 7)
    field(page, "top_p", 0.9)
    field(page, "presence_penalty", 0.5)
    field(page, "frequency_penalty", -0.5)
    field(page, "seed", 5)
    field(page, "max_tokens", 12)
    page.find_element(By.CSS_SELECTOR, "#system-box summary").click()
    field(page, "system", "You are Pip.")
    send(page, "hello")
    wait_done(page, 1)
    (body,) = sent_requests(page, "/v1/chat/completions")
    assert body["temperature"] == 1.7 and body["top_k"] == 7 and body["top_p"] == 0.9
    assert body["presence_penalty"] == 0.5 and body["frequency_penalty"] == -0.5
    assert body["seed"] == 5 and body["max_tokens"] == 12
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["messages"] == [
        {"role": "system", "content": "You are Pip."},
        {"role": "user", "content": "hello"},
    ]
    assert '"temperature": 1.7' in page.find_element(By.ID, "last-request").get_attribute(
        "textContent"
    )
    # the slider follows the box, and a change shows in the next request
    assert page.find_element(By.ID, "temperature-range").get_attribute("value") == "1.7"
    field(page, "temperature", 0.3)
    send(page, "and the sea?")
    wait_done(page, 2)
    (body,) = sent_requests(page, "/v1/chat/completions")
    assert body["temperature"] == 0.3
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]


def streaming_reply(page, text: str, tries: int = 4):
    """Sends `text` and returns the reply's <li> once a token of it has arrived while it
    is still streaming; a reply that ended too soon to stop is asked again."""
    for _ in range(tries):
        n = len(entries(page)) + 1
        send(page, text)

        def first_token(d, n=n):
            replies = entries(d)
            if len(replies) < n:
                return False
            if replies[n - 1].get_attribute("data-finish-reason"):
                return "ended"
            return replies[n - 1].find_elements(By.CSS_SELECTOR, CHIPS) and replies[n - 1]

        reply = wait_for(page, first_token)
        if reply != "ended":
            return reply
    pytest.fail(f"{tries} replies each ended before they could be stopped")


def running(server) -> int:
    with urllib.request.urlopen(server + "/health", timeout=5) as r:
        return json.load(r)["running"]


def test_stop_cancels_a_reply_mid_stream(page, server):
    throttle(page, 1500)  # a chunk with 20 alternatives is ~2.5 kB: under one a second
    field(page, "top_logprobs", 20)
    field(page, "max_tokens", 80)
    field(page, "temperature", 1.5)  # flatter: the end of turn is drawn later
    reply = streaming_reply(page, "what do you do when a storm comes?")
    stop = page.find_element(By.ID, "stop")
    stop.click()
    wait_for(page, lambda d: reply.get_attribute("data-finish-reason"), 10)
    assert reply.get_attribute("data-finish-reason") == "stopped"
    assert "stopped by you" in reply.find_element(By.CSS_SELECTOR, ".meta").text
    count = len(reply.find_elements(By.CSS_SELECTOR, CHIPS))
    assert not stop.is_enabled() and page.find_element(By.ID, "send").is_enabled()
    # the request was cancelled: the server's decode loop lets the sequence go
    wait_for(page, lambda d: running(server) == 0, 10)
    time.sleep(1)  # and nothing more arrives on the page
    assert len(reply.find_elements(By.CSS_SELECTOR, CHIPS)) == count
    # Escape stops too, and the server still answers the next request in full
    n = len(entries(page)) + 1
    send(page, "hello again")
    wait_for(page, lambda d: len(entries(d)) == n)
    page.find_element(By.ID, "input").send_keys(Keys.ESCAPE)
    assert wait_done(page, n, timeout=10).get_attribute("data-finish-reason") == "stopped"
    throttle(page, -1)
    send(page, "hi")
    assert wait_done(page, n + 1).get_attribute("data-finish-reason") in ("stop", "length")


def test_server_errors_are_shown(page):
    field(page, "temperature", -1)
    send(page, "hello")
    err = wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#chat-log .msg.error"))[0]
    assert err.get_attribute("role") == "alert"
    assert "Error 400" in err.text and "temperature" in err.text, err.text
    # the turn was not answered: marked, and its text is back in the box to send again
    assert "failed" in entries(page, "user")[-1].get_attribute("class")
    assert page.find_element(By.ID, "input").get_attribute("value") == "hello"
    assert page.find_element(By.ID, "send").is_enabled()
    field(page, "temperature", 0.8)
    page.find_element(By.ID, "input").send_keys(Keys.ENTER)
    assert wait_done(page, 1).get_attribute("data-finish-reason") in ("stop", "length")
    (_, body) = sent_requests(page, "/v1/chat/completions")
    assert [m["role"] for m in body["messages"]] == ["user"]  # the failed turn is not resent


def test_context_meter_marks_dropped_turns(page):
    field(page, "max_tokens", 16)
    long = "please tell me about the lamp and the sea and the moon and the gulls"
    for n in range(1, 7):
        send(page, f"{long} ({n})")
        wait_done(page, n)
        if page.find_elements(By.CSS_SELECTOR, "#chat-log .dropped-mark"):
            break
    else:
        pytest.fail("six long turns never outgrew the 96-token context")
    mark = page.find_element(By.CSS_SELECTOR, "#chat-log .dropped-mark")
    assert mark.is_displayed() and f"context holds {BLOCK_SIZE} tokens" in mark.text
    dropped = page.find_element(By.ID, "meter-dropped")
    assert dropped.is_displayed() and re.fullmatch(r"\d+ old turns? dropped", dropped.text)
    assert page.find_elements(By.CSS_SELECTOR, "#chat-log .msg.user.dropped")
    used, ctx = map(
        int, re.match(r"(\d+) / (\d+)", page.find_element(By.ID, "meter-text").text).groups()
    )
    assert ctx == BLOCK_SIZE and 0 < used <= ctx
    body = sent_requests(page, "/v1/chat/completions")[-1]
    sent_users = [m["content"] for m in body["messages"] if m["role"] == "user"]
    assert len(sent_users) < len(entries(page, "user")) and sent_users[-1].endswith(f"({n})")


def test_completion_mode_continues_a_raw_prompt(page):
    page.find_element(By.ID, "mode-completion").click()
    assert page.find_element(By.ID, "completion-view").is_displayed()
    assert not page.find_element(By.ID, "chat-view").is_displayed()
    assert page.find_element(By.ID, "send").text == "Generate"
    field(page, "max_tokens", 20)
    for n in range(1, 5):  # the tiny model may end a text at once: try again
        send(page, "The lamp")
        entry = wait_for(
            page,
            lambda d, n=n: [
                e
                for e in d.find_elements(By.CSS_SELECTOR, "#completion-log li.msg.prompt")
                if e.get_attribute("data-finish-reason")
            ][n - 1 :],
        )[0]
        assert entry.text.startswith("PROMPT\nThe lamp")
        assert USAGE.search(entry.find_element(By.CSS_SELECTOR, ".meta").text)
        if entry.find_elements(By.CSS_SELECTOR, CHIPS):
            break
    else:
        pytest.fail("four completions were all empty")
    body = sent_requests(page, "/v1/completions")[-1]
    assert body["prompt"] == "The lamp" and body["logprobs"] == 5 and body["max_tokens"] == 20
    assert "messages" not in body


def test_phone_width_layout_and_keyboard_only_use(page, artifacts):
    page.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        page.refresh()
        wait_for(
            page, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "ok"
        )
        # no sideways scrolling, and the side panel sits below the conversation, closed
        assert page.execute_script("return document.documentElement.scrollWidth <= innerWidth")
        assert page.find_element(By.ID, "sampling").get_attribute("open") is None
        # keyboard only: Tab reaches the message box; Enter sends
        ActionChains(page).send_keys(Keys.TAB).perform()
        for _ in range(40):
            if page.switch_to.active_element.get_attribute("id") == "input":
                break
            ActionChains(page).send_keys(Keys.TAB).perform()
        else:
            pytest.fail("Tab never reached the message box")
        page.switch_to.active_element.send_keys("hi pip!", Keys.ENTER)
        reply = wait_done(page, 1)
        assert reply.get_attribute("data-finish-reason") in ("stop", "length")
        assert page.execute_script("return document.documentElement.scrollWidth <= innerWidth")
        page.save_screenshot(str(artifacts / "phone_width.png"))
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def requests_sent(driver) -> list[dict]:
    """Every request the browser sent since the last look at its performance log."""
    out = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            out.append(msg["params"]["request"])
    return out


def test_the_page_loads_nothing_from_elsewhere(page, server):
    page.refresh()
    wait_for(page, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "ok")
    urls = [r["url"] for r in requests_sent(page)]
    assert all(u.startswith(server + "/") or u.startswith("data:") for u in urls), urls
    assert {"/", "/style.css", "/app.js", "/v1/models"} <= {urlparse(u).path for u in urls}


def test_a_text_model_behind_an_api_key(browser, text_server, artifacts):
    browser.set_window_size(1280, 860)
    browser.get(text_server + "/")
    status = browser.find_element(By.ID, "status")
    wait_for(browser, lambda d: status.get_attribute("data-state") == "down")
    assert status.text == "API key needed"
    err = browser.find_element(By.CSS_SELECTOR, "#chat-log .msg.error")
    assert "Error 401" in err.text
    browser.find_element(By.CSS_SELECTOR, "#connection summary").click()
    browser.find_element(By.ID, "api_key").send_keys(API_KEY, Keys.ENTER)
    wait_for(browser, lambda d: status.get_attribute("data-state") == "ok")
    # no chat template: the page is in completion mode, and says why
    assert browser.find_element(By.ID, "completion-view").is_displayed()
    assert "no chat template" in browser.find_element(By.ID, "completion-log").text
    browser.get_log("performance")
    send(browser, "to be or")
    entry = wait_for(
        browser,
        lambda d: [
            e
            for e in d.find_elements(By.CSS_SELECTOR, "#completion-log li.msg.prompt")
            if e.get_attribute("data-finish-reason")
        ],
    )[0]
    # the context is 16 characters: 8 of prompt leave 8 to generate
    assert entry.get_attribute("data-finish-reason") == "length"
    assert len(entry.find_elements(By.CSS_SELECTOR, CHIPS)) == 8
    assert browser.find_element(By.ID, "meter-text").text == "16 / 16 tokens"
    (sent,) = [r for r in requests_sent(browser) if r["url"].endswith("/v1/completions")]
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    assert headers["authorization"] == f"Bearer {API_KEY}"
    # chat mode gets the server's 400, shown as it came
    browser.find_element(By.ID, "mode-chat").click()
    send(browser, "hello")
    errors = "#chat-log .msg.error"
    err = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, errors)[1:])[0]
    assert "Error 400" in err.text and "chat template" in err.text and "/v1/completions" in err.text
    browser.save_screenshot(str(artifacts / "text_model_behind_an_api_key.png"))
