"""`npllm prepare --chat`: JSONL checks with line numbers, the split by conversation, the
token/mask/start files, packed masked batches, and the seeded `chat-demo` corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npllm import cli
from npllm.chat import IM_END, encode_chat
from npllm.chat_data import get_chat_batch, load_chat_split, prepare_chat, window_starts
from npllm.chat_demo import TOPICS, conversations
from npllm.data import load_data_tokenizer, load_meta


def write_jsonl(path, convs):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    return path


def conv(k):
    return [
        {"role": "user", "content": f"question {k}?"},
        {"role": "assistant", "content": f"answer {k}."},
    ]


def test_prepare_chat_splits_by_conversation_and_writes_aligned_masks(tmp_path):
    convs = [conv(k) for k in range(40)]
    src = write_jsonl(tmp_path / "c.jsonl", convs)
    meta = prepare_chat(str(src), tmp_path / "d", val_fraction=0.25, seed=3)
    assert meta["chat"] and meta["train_conversations"] == 30 and meta["val_conversations"] == 10
    tok = load_data_tokenizer(tmp_path / "d")
    val = [json.loads(line)["messages"] for line in (tmp_path / "d" / "val.jsonl").open()]
    seen = []
    for split in ("train", "val"):
        tokens, mask, starts = load_chat_split(tmp_path / "d", split)
        assert len(tokens) == len(mask) == meta[f"{split}_tokens"]
        ends = [*starts[1:], len(tokens)]
        for a, b in zip(starts, ends):
            text = tok.decode(tokens[a:b])
            k = int(text.split("question ")[1].split("?")[0])
            ids, m = encode_chat(tok, convs[k])
            assert list(tokens[a:b]) == ids and list(mask[a:b]) == [int(x) for x in m]
            seen.append((split, k))
    by_split = {s: {k for t, k in seen if t == s} for s in ("train", "val")}
    assert not by_split["train"] & by_split["val"]  # no conversation in both
    assert by_split["train"] | by_split["val"] == set(range(40))
    assert sorted(int(c[0]["content"].split()[1][:-1]) for c in val) == sorted(by_split["val"])
    # the same seed splits the same way; another seed differently
    again = prepare_chat(str(src), tmp_path / "e", val_fraction=0.25, seed=3)
    assert (tmp_path / "e" / "val.jsonl").read_text() == (tmp_path / "d" / "val.jsonl").read_text()
    assert again["val_tokens"] == meta["val_tokens"]


def test_chat_batches_pack_conversations_and_ignore_all_but_assistant_targets(tmp_path):
    prepare_chat("chat-demo", tmp_path / "d", size=200, seed=1)
    tokens, mask, starts = load_chat_split(tmp_path / "d", "train")
    T = 128
    ok = window_starts(tokens, starts, T, "train")
    x, y = get_chat_batch(tokens, mask, ok, 8, T, np.random.default_rng(0))
    assert x.shape == y.shape == (8, T) and x.dtype == y.dtype == np.int64
    end = load_data_tokenizer(tmp_path / "d").special_id(IM_END)
    for row_x, row_y in zip(x, y):
        start = next(s for s in ok if np.array_equal(tokens[s : s + T], row_x))
        window = slice(start + 1, start + T + 1)
        assert np.array_equal(row_y == -1, mask[window] == 0)
        assert np.array_equal(row_y[row_y != -1], tokens[window][mask[window] == 1])
    assert (y == end).any() and (y == -1).any()
    # one rng call per batch, as get_batch: a saved state replays the same batch
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    a = get_chat_batch(tokens, mask, ok, 4, T, rng)
    rng.bit_generator.state = state
    b = get_chat_batch(tokens, mask, ok, 4, T, rng)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_chat_demo_is_seeded_varied_and_in_persona():
    a, b = conversations(500, seed=7), conversations(500, seed=7)
    assert a == b and conversations(500, seed=8) != a
    assert len(TOPICS) >= 30
    turns = [sum(m["role"] == "user" for m in c) for c in a]
    assert min(turns) == 1 and max(turns) >= 3 and 0.2 < np.mean(np.array(turns) > 1) < 0.6
    assert 0.1 < np.mean([c[0]["role"] == "system" for c in a]) < 0.4
    replies = " ".join(m["content"] for c in a for m in c if m["role"] == "assistant")
    assert "Pip" in replies and "Gull Island" in replies
    firsts = [next(m["content"] for m in c if m["role"] == "user") for c in a]
    assert len(set(firsts)) > 0.6 * len(firsts)  # wordings vary, not one string per topic


def test_prepare_chat_demo_cli_with_size_and_bpe(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["prepare", "--corpus", "chat-demo", "--size", "300", "--out", str(out)]
    assert cli.main([*args, "--tokenizer", "bpe", "--vocab-size", "400"]) == 0
    said = capsys.readouterr().out
    assert "270 train and 30 val conversations" in said and "assistant tokens" in said
    meta = load_meta(out)
    assert meta["vocab_size"] == 400 and set(meta["special_tokens"]) == {
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
    }
    # a user's own special token, declared at prepare time, gets the next id
    assert cli.main([*args[:-1], str(tmp_path / "e"), "--special-token", "<|tool|>"]) == 0
    assert (
        load_meta(tmp_path / "e")["special_tokens"]["<|tool|>"]
        == load_meta(tmp_path / "e")["vocab_size"] - 1
    )


BAD_LINES = [
    ("{not json", "line 2: not valid JSON"),
    ('["a"]', 'line 2: expected an object with a "messages" list'),
    ('{"messages": []}', 'line 2: "messages" must be a non-empty list'),
    (
        '{"messages": [{"role": "user", "content": "x"}]}',
        "line 2: the conversation has no assistant",
    ),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "line 2: message 1 has role 'robot'"),
    ('{"messages": [{"role": "user"}]}', 'line 2: message 1 \\(user\\) needs a "content" string'),
]


@pytest.mark.parametrize("line, match", BAD_LINES)
def test_a_malformed_jsonl_line_gives_one_line_and_exit_2(tmp_path, capsys, line, match):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"messages": conv(0)}) + "\n" + line + "\n")
    rc = cli.main(["prepare", "--corpus", str(src), "--chat", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"npllm prepare: error: {src}, line 2")
    assert __import__("re").search(match, err)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--chat", "--corpus", "{missing}"], "no such file"),
        (["--corpus", "chat-demo", "--size", "1"], "at least 2"),
        (["--corpus", "{one}", "--chat"], "at least two"),
        (["--corpus", "{one}", "--size", "5"], "--size applies to chat data only"),
        (["--corpus", "chat-demo", "--tokenizer", "bpe", "--vocab-size", "258"], "at least 259"),
        (["--corpus", "chat-demo", "--tokenizer-from", "{missing}"], "neither a run folder"),
    ],
)
def test_bad_chat_prepare_input_gives_one_line(tmp_path, capsys, args, match):
    one = write_jsonl(tmp_path / "one.jsonl", [conv(0)])
    args = [a.format(missing=tmp_path / "nope", one=one) for a in args]
    assert cli.main(["prepare", *args, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err


def test_train_straight_from_chat_demo(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--corpus", "chat-demo", "--tokenizer", "bpe", "--vocab-size", "300"]
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32"]
    quick = ["--max-iters", "2", "--eval-iters", "1", "--batch-size", "2", "--quiet"]
    assert cli.main([*args, "--out", str(run), *tiny, *quick]) == 0
    meta = load_meta(run / "data")
    assert meta["chat"] and meta["vocab_size"] == 300 and meta["train_conversations"] == 18_000


def test_text_that_a_reused_tokenizer_cannot_encode_names_its_line(tmp_path, capsys):
    base = tmp_path / "base"
    prepare_chat(str(write_jsonl(tmp_path / "a.jsonl", [conv(k) for k in range(5)])), base)
    src = tmp_path / "b.jsonl"
    src.write_text(
        json.dumps({"messages": conv(1)}) + "\n\n" + json.dumps({"messages": conv("Ω")}) + "\n"
    )
    args = ["prepare", "--corpus", str(src), "--chat", "--tokenizer-from", str(base)]
    assert cli.main([*args, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert f"{src}, line 3: characters not in the tokenizer's alphabet: 'Ω'" in err


def test_paraphrases_cover_every_topic_in_wordings_chat_demo_never_makes():
    from npllm.chat_demo import PARAPHRASES, topic_answers

    assert sorted(t for t, _ in PARAPHRASES) == sorted(t[0] for t in TOPICS)
    generated = {q for _, qs, _, _ in TOPICS for q in qs}
    users = {m["content"] for c in conversations(3000, seed=0) for m in c if m["role"] == "user"}
    for topic, q in PARAPHRASES:
        assert q.lower().rstrip("?.!") not in generated and q not in users
        assert topic_answers(topic)
