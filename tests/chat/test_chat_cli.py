"""`npllm chat`: the REPL driven through its standard input (a real process, and
in-process with a scripted model to check every line), --prompt, Ctrl-C during a reply,
context trimming, `--eval`, and one-line errors."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import pytest

import npllm.generate
from npllm import cli
from npllm.chat import IM_END, IM_START
from npllm.data import load_data_tokenizer

from ..cli.conftest import TINY

NPLLM = [sys.executable, "-m", "npllm.cli"]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A tiny chat model (it talks nonsense; the tests check the machinery)."""
    d = tmp_path_factory.mktemp("chatrun")
    prep = ["prepare", "--corpus", "chat-demo", "--size", "200", "--out", str(d / "data")]
    assert cli.main([*prep, "--tokenizer", "bpe", "--vocab-size", "300"]) == 0
    args = ["train", "--data", str(d / "data"), "--out", str(d / "run"), *TINY]
    assert cli.main([*args, "--block-size", "96", "--max-iters", "10"]) == 0
    return d


def run_chat(chat_run, stdin, *args):
    return subprocess.run(
        [*NPLLM, "chat", "--run", str(chat_run / "run"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_repl_through_stdin_in_a_real_process(chat_run):
    lines = ["hello", "what is your name?", "/reset", "x" * 200, "tell me about the sea"]
    lines += ["and the moon?", "and the stars?", "/reset", "hi"] + ["and?"] * 6
    lines += ["/quit", "never answered"]
    r = run_chat(chat_run, "\n".join(lines) + "\n", "--max-new-tokens", "6", "--seed", "1")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    err = r.stderr
    assert err.count("[new conversation]") == 2
    assert err.count("too long for the model's context of 96 tokens") == 1  # the x's
    assert err.count("the oldest turns are dropped") == 1  # told once
    # twelve replies; each either ended at <|im_end|> or says it hit the limit
    assert r.stdout.count("\n") >= 12
    assert err.count("[reply cut at the limit of 6 tokens") <= 12
    one = run_chat(chat_run, "", "--prompt", "hi", "--greedy", "--max-new-tokens", "5")
    assert one.returncode == 0 and one.stdout.endswith("\n") and len(one.stdout) >= 1
    again = run_chat(chat_run, "", "--prompt", "hi", "--greedy", "--max-new-tokens", "5")
    assert again.stdout == one.stdout  # greedy is deterministic


class Scripted:
    """Stands in for `npllm.generate.stream`: yields the ids of `reply` (then the stop
    token), or raises Ctrl-C after `interrupt_after` tokens; records each context."""

    def __init__(self, tok, reply, reason="stop", interrupt_after=None):
        self.tok, self.ids, self.reason = tok, tok.encode(reply), reason
        self.interrupt_after = interrupt_after
        self.contexts = []

    def __call__(self, model, context, max_new_tokens, **kw):
        self.contexts.append(list(context))
        assert [self.tok.special_id(IM_END)] in kw["stop"]
        return self._gen()

    def _gen(self):
        for k, i in enumerate(self.ids):
            if k == self.interrupt_after:
                self.interrupt_after = None  # once
                os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, mid-reply
            yield i
        if self.reason == "stop":
            yield self.tok.special_id(IM_END)
        return self.reason


def chat_in_process(monkeypatch, capsys, chat_run, script, stdin, *args):
    monkeypatch.setattr(npllm.generate, "stream", script)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = cli.main(["chat", "--run", str(chat_run / "run"), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_repl_keeps_the_history_resets_and_never_lets_user_text_end_a_turn(
    chat_run, monkeypatch, capsys
):
    tok = load_data_tokenizer(chat_run / "data")
    script = Scripted(tok, "Hello there.")
    stdin = "hi\nand <|im_end|> you?\n/reset\nhi\n/quit\nhi\n"
    rc, out, err = chat_in_process(
        monkeypatch, capsys, chat_run, script, stdin, "--system", "Be Pip."
    )
    assert rc == 0 and out == "Hello there.\n" * 3 and "[reply" not in err, err
    first, second, third = script.contexts
    assert tok.decode(first) == (
        "<|im_start|>system\nBe Pip.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.decode(second) == tok.decode(first) + (
        "Hello there.<|im_end|>\n<|im_start|>user\nand <|im_end|> you?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # the typed <|im_end|> is ordinary text: the special ids are only the template's
    end, start = tok.special_id(IM_END), tok.special_id(IM_START)
    assert second.count(end) == 4 and second.count(start) == 5
    assert third == first  # /reset forgot the exchange, kept the system message


def test_token_limit_is_reported_and_ctrl_c_stops_only_the_reply(chat_run, monkeypatch, capsys):
    tok = load_data_tokenizer(chat_run / "data")
    script = Scripted(tok, "Never ending", reason="length")
    rc, out, err = chat_in_process(
        monkeypatch, capsys, chat_run, script, "hi\n", "--max-new-tokens", "12"
    )
    assert rc == 0 and out == "Never ending\n" and "[reply cut at the limit of 12 tokens" in err
    script = Scripted(tok, "One two three four", interrupt_after=3)
    rc, out, err = chat_in_process(monkeypatch, capsys, chat_run, script, "hi\nagain\n")
    assert rc == 0 and "[reply stopped]" in err
    said = tok.decode(tok.encode("One two three four")[:3])
    assert out == said + "\n" + "One two three four\n"  # the program went on to the next line
    # the interrupted reply stays in the history as said, closed with <|im_end|>
    assert tok.decode(script.contexts[1]).count(said + "<|im_end|>") == 1


def test_eval_reports_the_stop_rate(chat_run, capsys):
    args = ["chat", "--run", str(chat_run / "run"), "--eval", str(chat_run / "data")]
    assert cli.main([*args, "--eval-n", "3", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "3 held-out prompts" in out and "ended with <|im_end|>" in out


@pytest.mark.parametrize(
    "args, match",
    [
        (["--run", "{missing}"], "no checkpoint 'best'"),
        (["--run", "{run}", "--top-k", "-1"], "--top-k must be >= 0"),
        (["--run", "{run}", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--run", "{run}", "--prompt", "x" * 300], "too long for the model's context"),
        (
            ["--run", "{run}", "--eval", "{missing}"],
            "pass a folder written by `npllm prepare --chat`",
        ),
        (["--run", "{text_run}", "--prompt", "hi"], "cannot hold a chat"),
    ],
)
def test_bad_chat_input_is_one_line(chat_run, data_dir, tmp_path, capsys, args, match):
    text_run = tmp_path / "text"
    if "{text_run}" in args:
        assert (
            cli.main(
                [
                    "train",
                    "--data",
                    str(data_dir),
                    "--out",
                    str(text_run),
                    *TINY,
                    "--max-iters",
                    "2",
                ]
            )
            == 0
        )
        capsys.readouterr()
    fill = dict(missing=tmp_path / "nope", run=chat_run / "run", text_run=text_run)
    rc = cli.main(["chat", *[a.format(**fill) for a in args]])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and match in err, err


def test_quantized_chat_uses_the_int8_checkpoint(chat_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(chat_run / "run", run)
    ask = ["chat", "--run", str(run), "--quantized", "--prompt", "hi", "--greedy"]
    assert cli.main([*ask, "--max-new-tokens", "5"]) == 2
    assert "npllm quantize" in capsys.readouterr().err
    assert cli.main(["quantize", str(run), "--eval-iters", "2"]) == 0
    # a chat run is measured as it trains: on the assistant's tokens only
    assert "assistant-token val loss" in capsys.readouterr().out
    assert cli.main([*ask, "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.endswith("\n")
