"""Conversation data: JSONL or `chat-demo` -> ChatML token and mask files -> batches.

`prepare_chat` reads one `{"messages": [...]}` per line (the fine-tuning format of
OpenAI's tools; other keys are ignored), checks every line (a bad one stops it with the
line number and what is wrong), splits train/val by conversation (a seeded shuffle, so no
conversation is in both), renders each conversation in ChatML (`npllm.chat`) and writes,
per split, the tokens (`train.bin`), the assistant mask (`train_mask.bin`, uint8, 1 where
the token is a target the loss counts) and where each conversation starts
(`train_starts.bin`, int64 offsets), plus `val.jsonl`, the validation conversations (each
marked `"unseen"` when its first user message occurs nowhere in training) and the usual
`tokenizer.json` and `meta.json` (`"chat": true`).

`get_chat_batch` packs: each row is a window of `block_size + 1` tokens that begins at a
random conversation start and runs on into the next ones; targets outside the mask are
-1, the ignore index of `F.cross_entropy`, so only assistant tokens count.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from npllm.chat import CHAT_SPECIALS, check_messages, encode_chat
from npllm.errors import ConfigError, DataError
from npllm.io import ensure_writable_dir, write_bytes_atomic, write_json_atomic
from npllm.tokenizers import Tokenizer, load_tokenizer

CHAT_DEMO = "chat-demo"
DEFAULT_DEMO_SIZE = 20_000
Conversation = list[dict[str, str]]


def read_conversations(path: str | os.PathLike) -> tuple[list[Conversation], list[int]]:
    """The conversations of a JSONL file and their line numbers, or a DataError naming
    the first bad line."""
    from npllm.data import read_text_file

    text = read_text_file(path)
    convs, lines = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict) or "messages" not in record:
                raise DataError('expected an object with a "messages" list')
            convs.append(check_messages(record["messages"]))
            lines.append(n)
        except DataError as e:
            raise DataError(
                f'{path}, line {n}: {e}; each line must be {{"messages": [{{"role": '
                '"user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
            ) from None
    if not convs:
        raise DataError(f"{path} holds no conversations; write one JSON object per line")
    return convs, lines


def load_conversations(
    corpus: str, size: int | None, seed: int
) -> tuple[list[Conversation], list[str]]:
    """The conversations of `corpus` (chat-demo or a JSONL file), each with where it is
    from for error messages."""
    if corpus == CHAT_DEMO:
        from npllm.chat_demo import conversations

        n = DEFAULT_DEMO_SIZE if size is None else size
        if n < 2:
            raise ConfigError(f"--size must be at least 2 conversations, got {n}")
        return conversations(n, seed), [f"{CHAT_DEMO} conversation {k + 1}" for k in range(n)]
    if size is not None:
        raise ConfigError(f"--size applies to --corpus {CHAT_DEMO} only; drop it")
    convs, lines = read_conversations(corpus)
    return convs, [f"{corpus}, line {n}" for n in lines]


def chat_tokenizer(
    convs: list[Conversation],
    kind: str,
    vocab_size: int | None,
    tokenizer_from: str | None,
    specials: tuple[str, ...],
) -> Tokenizer:
    """A tokenizer for the conversations, with the chat tokens and `specials`: learned
    from their text, or an existing one (a run's or a data folder's) extended."""
    from npllm.data import make_tokenizer

    names = CHAT_SPECIALS + tuple(s for s in specials if s not in CHAT_SPECIALS)
    if tokenizer_from is not None:
        return tokenizer_of(tokenizer_from).with_specials(names)
    texts = [f"{m['role']}\n{m['content']}\n" for c in convs for m in c]
    return make_tokenizer(texts, kind, vocab_size, names)


def tokenizer_of(source: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a run folder (its best, else last checkpoint), a data folder, or
    a tokenizer.json file."""
    from npllm.checkpoint import read_record
    from npllm.errors import CheckpointError
    from npllm.tokenizers import tokenizer_from_dict

    p = Path(source)
    if p.is_file():
        return load_tokenizer(p)
    if (p / "tokenizer.json").is_file():
        return load_tokenizer(p / "tokenizer.json")
    for name in ("best", "last"):
        if (p / f"{name}.json").is_file():
            try:
                return tokenizer_from_dict(read_record(p, name)["tokenizer"])
            except (CheckpointError, KeyError) as e:
                raise DataError(f"cannot read the tokenizer of the run {p}: {e}") from None
    raise DataError(
        f"{p} is neither a run folder, a data folder nor a tokenizer.json; pass the "
        "--out of an `npllm train` or `npllm prepare`"
    )


def _pack(tok: Tokenizer, convs: list[Conversation], where: list[str]) -> tuple[np.ndarray, ...]:
    """(tokens, mask, starts) of the conversations, one after another."""
    from npllm.data import token_dtype

    ids: list[int] = []
    mask: list[bool] = []
    starts = []
    for c, line in zip(convs, where):
        starts.append(len(ids))
        try:
            i, m = encode_chat(tok, c)
        except DataError as e:
            raise DataError(f"{line}: {e}") from None
        ids += i
        mask += m
    return (
        np.asarray(ids, dtype=token_dtype(tok.vocab_size)),
        np.asarray(mask, dtype=np.uint8),
        np.asarray(starts, dtype=np.int64),
    )


def prepare_chat(
    corpus: str,
    out: str | os.PathLike,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    val_fraction: float = 0.1,
    *,
    size: int | None = None,
    seed: int = 0,
    tokenizer_from: str | None = None,
    specials: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write a chat data folder (see the module docstring); returns its meta."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    out = ensure_writable_dir(out, "--out")
    convs, where = load_conversations(corpus, size, seed)
    if len(convs) < 2:
        raise DataError(
            f"{corpus} holds {len(convs)} conversation; a train/val split needs at least two"
        )
    tok = chat_tokenizer(convs, tokenizer, vocab_size, tokenizer_from, specials)
    order = np.random.default_rng([4, seed]).permutation(len(convs))
    n_val = min(max(1, round(len(convs) * val_fraction)), len(convs) - 1)
    split = {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}
    meta: dict[str, Any] = {
        "corpus": corpus,
        "chat": True,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "special_tokens": tok.specials,
        "seed": seed,
    }
    for name, rows in split.items():
        tokens, mask, starts = _pack(tok, [convs[i] for i in rows], [where[i] for i in rows])
        meta["dtype"] = tokens.dtype.name
        meta[f"{name}_conversations"] = len(rows)
        meta[f"{name}_tokens"] = len(tokens)
        meta[f"{name}_assistant_tokens"] = int(mask.sum())
        write_bytes_atomic(out / f"{name}.bin", tokens.tobytes())
        write_bytes_atomic(out / f"{name}_mask.bin", mask.tobytes())
        write_bytes_atomic(out / f"{name}_starts.bin", starts.tobytes())
    seen = {m["content"] for i in split["train"] for m in convs[i] if m["role"] == "user"}
    lines = []
    for i in split["val"]:
        first = next((m["content"] for m in convs[i] if m["role"] == "user"), None)
        lines.append(json.dumps({"messages": convs[i], "unseen": first not in seen}) + "\n")
    write_bytes_atomic(out / "val.jsonl", "".join(lines).encode("utf-8"))
    tok.save(out / "tokenizer.json")
    write_json_atomic(out / "meta.json", meta)
    return meta


def load_chat_split(data_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, ...]:
    """(tokens, mask, starts) of a chat data folder's `train` or `val` split, memmapped."""
    from npllm.data import load_split

    tokens = load_split(data_dir, split)
    arrays = [tokens]
    for suffix, dtype in (("mask", np.uint8), ("starts", np.int64)):
        path = Path(data_dir) / f"{split}_{suffix}.bin"
        size = path.stat().st_size if path.is_file() else -1
        if size <= 0 or size % np.dtype(dtype).itemsize:
            raise DataError(f"{path} is missing or truncated; prepare the data again")
        arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    if len(arrays[1]) != len(tokens) or arrays[2].max() >= len(tokens):
        raise DataError(f"the {split} files of {data_dir} do not match; prepare the data again")
    return tuple(arrays)


def window_starts(tokens: np.ndarray, starts: np.ndarray, block_size: int, what: str) -> np.ndarray:
    """The conversation starts a full window of `block_size + 1` tokens can begin at."""
    ok = np.asarray(starts[starts + block_size + 1 <= len(tokens)])
    if not len(ok):
        raise DataError(
            f"the {what} split has {len(tokens)} tokens, fewer than block_size + 1 = "
            f"{block_size + 1} after its first conversation start; use more conversations "
            "or a smaller --block-size"
        )
    return ok


def get_chat_batch(
    tokens: np.ndarray,
    mask: np.ndarray,
    starts: np.ndarray,
    batch_size: int,
    block_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs x and targets y, int64 (B, T): windows from random conversation starts
    (`starts` as `window_starts` returns them), y = -1 where the mask is 0. One
    `rng.integers` call, as `npllm.data.get_batch`."""
    ix = starts[rng.integers(0, len(starts), size=batch_size)]  # (B,)
    rows = ix[:, None] + np.arange(block_size + 1)  # (B, T+1)
    chunk = tokens[rows].astype(np.int64)
    y = np.where(mask[rows[:, 1:]] != 0, chunk[:, 1:], -1)  # (B, T)
    return chunk[:, :-1], y
