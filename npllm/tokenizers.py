"""Tokenizers: `CharTokenizer` (one id per character of the corpus alphabet) and a
byte-level `BPETokenizer` (GPT-2 style: pre-split text into words, start from the 256
bytes, learn merges by pair count). Both `encode(str) -> list[int]`,
`decode(list[int]) -> str`, `save(path)` and `load(path)` as JSON; `load_tokenizer(path)`
reads either kind. See docs/architecture.md, "Around the model".

Special tokens (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, or any string a user
declares) take the ids after the ordinary vocabulary, in the order declared, and keep them
through save/load and `with_specials`. Each is one id, never split and never part of a
merge. `encode` produces a special id only for the specials the caller names in
`allowed_special` (as tiktoken does); by default a special's text found in the input is
encoded as the ordinary text it is, so a user who types `<|im_end|>` cannot end a turn.
"""

from __future__ import annotations

import heapq
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Literal

from npllm.errors import DataError
from npllm.io import write_json_atomic

# GPT-2's pre-split pattern, written for the standard `re` module: `[^\W\d_]` stands for
# \p{L} and `\d` for \p{N}; underscore, which `\w` counts, goes with the punctuation so
# that every character of any string falls in exactly one piece.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""


AllowedSpecial = Literal["all"] | Collection[str]


class _SavedAsJSON:
    """What both tokenizers share: special tokens on top of the ordinary vocabulary
    (`_encode_ordinary`, `base_vocab_size`), and `save`/`load` through `to_dict()`."""

    kind: str
    specials: dict[str, int]  # text -> id, ids base_vocab_size, base_vocab_size + 1, ...

    @property
    def base_vocab_size(self) -> int:
        raise NotImplementedError

    def _encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError

    def _set_specials(self, specials: Sequence[str]) -> None:
        specials = list(specials)
        if any(not isinstance(t, str) or not t for t in specials):
            raise DataError("special tokens must be non-empty strings")
        if len(set(specials)) != len(specials):
            raise DataError(f"special tokens must be distinct, got {specials}")
        base = self.base_vocab_size
        self.specials = {t: base + k for k, t in enumerate(specials)}
        self._special_split: dict[frozenset[str], re.Pattern] = {}

    @property
    def vocab_size(self) -> int:
        return self.base_vocab_size + len(self.specials)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.specials.values())

    def special_id(self, text: str) -> int:
        """The id of special token `text` (a DataError naming the fix if it has none)."""
        try:
            return self.specials[text]
        except KeyError:
            raise DataError(
                f"the tokenizer has no special token {text!r}; prepare the data again "
                "with it (chat data: `npllm prepare --chat` adds the chat tokens)"
            ) from None

    def with_specials(self, specials: Iterable[str]):
        """A copy with `specials` appended (those it already has keep their ids)."""
        names = list(self.specials) + [t for t in specials if t not in self.specials]
        d = self.to_dict()
        d["specials"] = [[t, self.base_vocab_size + k] for k, t in enumerate(names)]
        return tokenizer_from_dict(d)

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Token ids of `text`. The specials named in `allowed_special` ("all": every
        one) become their ids where their text occurs; any other text, a special's
        included, is encoded as ordinary text."""
        if allowed_special == "all":
            allowed = frozenset(self.specials)
        else:
            allowed = frozenset(allowed_special)
            unknown = allowed - self.specials.keys()
            if unknown:
                raise DataError(
                    f"allowed_special names {sorted(unknown)}, which are not special "
                    f"tokens of this tokenizer ({sorted(self.specials)})"
                )
        if not allowed:
            return self._encode_ordinary(text)
        split = self._special_split.get(allowed)
        if split is None:
            # longest first, so a special that begins with another one wins
            alts = sorted(allowed, key=lambda t: (-len(t), t))
            split = re.compile("|".join(map(re.escape, alts)))
            self._special_split[allowed] = split
        out: list[int] = []
        pos = 0
        for m in split.finditer(text):
            out.extend(self._encode_ordinary(text[pos : m.start()]))
            out.append(self.specials[m.group()])
            pos = m.end()
        out.extend(self._encode_ordinary(text[pos:]))
        return out

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def _specials_dict(self) -> dict[str, Any]:
        return {"specials": [[t, i] for t, i in self.specials.items()]} if self.specials else {}

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike):
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise DataError(f"{path} holds a {tok.kind} tokenizer, not a {cls.kind} tokenizer")
        return tok


class CharTokenizer(_SavedAsJSON):
    """One token per character; the vocabulary is the sorted alphabet of a text."""

    kind = "char"

    def __init__(self, chars: Sequence[str], specials: Sequence[str] = ()):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        if len(self.stoi) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise DataError("a CharTokenizer needs distinct single characters")
        self._set_specials(specials)
        self._itos = self.chars + list(self.specials)

    @classmethod
    def from_text(cls, text: str, specials: Sequence[str] = ()) -> CharTokenizer:
        return cls(sorted(set(text)), specials)

    @property
    def base_vocab_size(self) -> int:
        return len(self.chars)

    def _encode_ordinary(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise DataError(
                f"characters not in the tokenizer's alphabet: {shown}; use only characters "
                "of the training corpus, or a BPE tokenizer (--tokenizer bpe)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        itos = self._itos
        try:
            return "".join(itos[i] for i in ids if i >= 0 or _negative(i))
        except (IndexError, TypeError):
            raise DataError(f"token ids must lie in [0, {self.vocab_size})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "chars": self.chars, **self._specials_dict()}


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair`, left to right, by `new_id`."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer(_SavedAsJSON):
    """Byte-level BPE: ids 0-255 are bytes, id 256 + k is the k-th learned merge."""

    kind = "bpe"

    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        pattern: str = GPT2_SPLIT_PATTERN,
        specials: Sequence[str] = (),
    ):
        self.merges = [tuple(m) for m in merges]
        self.pattern = pattern
        self._split = re.compile(pattern)
        self.ranks = {pair: 256 + k for k, pair in enumerate(self.merges)}
        self.vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            if not (0 <= a < len(self.vocab) and 0 <= b < len(self.vocab)):
                raise DataError(f"BPE merge {(a, b)} refers to an id not yet defined")
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self._set_specials(specials)
        # vocab[i] is the bytes id i decodes to, specials included (their UTF-8 text)
        self.vocab.extend(t.encode("utf-8") for t in self.specials)
        self._cache: dict[str, list[int]] = {}

    @property
    def base_vocab_size(self) -> int:
        return 256 + len(self.merges)

    @classmethod
    def train(
        cls, text: str | Iterable[str], vocab_size: int, specials: Sequence[str] = ()
    ) -> BPETokenizer:
        """Learn `vocab_size - 256 - len(specials)` merges from `text` (a string, or
        several texts that no merge may cross), most frequent pair first (ties go to the
        smallest pair, so training is deterministic). Stops early when no pair occurs
        twice. Pair counts are updated incrementally, touching only the words that hold
        the merged pair, with a lazy max-heap over counts. `specials` follow the merges."""
        n_merges = vocab_size - 256 - len(specials)
        if n_merges < 0:
            raise DataError(
                f"a byte-level BPE vocabulary needs at least 256 ids plus one per special "
                f"token ({256 + len(specials)}), got {vocab_size}"
            )
        split = re.compile(GPT2_SPLIT_PATTERN)
        texts = [text] if isinstance(text, str) else text
        word_counts = Counter(w for t in texts for w in split.findall(t))
        words = [list(w.encode("utf-8")) for w in word_counts]
        freqs = list(word_counts.values())
        pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for wi, (w, f) in enumerate(zip(words, freqs)):
            for pair in zip(w, w[1:]):
                pair_counts[pair] += f
                where[pair].add(wi)
        heap = [(-c, p) for p, c in pair_counts.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while len(merges) < n_merges and heap:
            neg, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg:
                continue  # stale heap entry: the count changed since it was pushed
            if -neg < 2:
                break
            new_id = 256 + len(merges)
            merges.append(pair)
            changed: set[tuple[int, int]] = set()
            for wi in where.pop(pair):
                w, f = words[wi], freqs[wi]
                for p in zip(w, w[1:]):
                    pair_counts[p] -= f
                    changed.add(p)
                w = _merge(w, pair, new_id)
                words[wi] = w
                for p in zip(w, w[1:]):
                    pair_counts[p] += f
                    where[p].add(wi)
                    changed.add(p)
            for p in changed:
                c = pair_counts[p]
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    del pair_counts[p]
            pair_counts.pop(pair, None)
        return cls(merges, specials=specials)

    def _encode_word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        ids = list(word.encode("utf-8"))
        ranks = self.ranks
        while len(ids) > 1:
            # Apply the earliest-learned merge present, as training did.
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, 1 << 62))
            if best not in ranks:
                break
            ids = _merge(ids, best, ranks[best])
        if len(self._cache) < 1_000_000:
            self._cache[word] = ids
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        out: list[int] = []
        for word in self._split.findall(text):
            out.extend(self._encode_word(word))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        try:
            data = b"".join(self.vocab[i] for i in ids if i >= 0 or _negative(i))
        except (IndexError, TypeError):
            raise DataError(f"token ids must lie in [0, {self.vocab_size})") from None
        # A sampled sequence may cut a multi-byte character; show it as U+FFFD.
        return data.decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        merges = [list(m) for m in self.merges]
        return {
            "type": self.kind,
            "pattern": self.pattern,
            "merges": merges,
            **self._specials_dict(),
        }


def _negative(i: int) -> bool:
    raise IndexError(i)  # list indexing would wrap a negative id round to the end


Tokenizer = CharTokenizer | BPETokenizer


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its `to_dict()` form (as stored in JSON)."""
    try:
        specials = [t for t, _ in d.get("specials", [])]
        if d["type"] == CharTokenizer.kind:
            tok: Tokenizer = CharTokenizer(d["chars"], specials)
        elif d["type"] == BPETokenizer.kind:
            tok = BPETokenizer([tuple(m) for m in d["merges"]], d["pattern"], specials)
        else:
            tok = None
        if tok is not None:
            saved = {t: int(i) for t, i in d.get("specials", [])}
            if saved != tok.specials:
                raise ValueError(f"special token ids {saved} are not {tok.specials}")
            return tok
    except (KeyError, TypeError, ValueError, re.error) as e:
        raise DataError(f"malformed tokenizer ({e!r}); prepare the data again") from None
    raise DataError(f"unknown tokenizer type {d.get('type')!r}; expected 'char' or 'bpe'")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer saved by `save`, whichever its kind."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise DataError(f"no tokenizer at {path}; run `npllm prepare` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read tokenizer {path}: {e}; prepare the data again") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a tokenizer file; prepare the data again")
    return tokenizer_from_dict(d)
