"""npllm tokenizers in other programs' terms, and back.

Byte-level BPE is written as GPT-2 writes it: every byte is shown as one printable
character (`bytes_to_unicode`, GPT-2's table), a token is the string of its bytes'
characters, and a merge is the pair of its parts' strings, in learning order. npllm's ids
are kept: byte b is id b, merge k is id 256 + k, the specials follow. Hugging Face
`tokenizers` and llama.cpp both read this form.

The pre-split regex is the delicate part. npllm runs its pattern on Python's `re`, where
`\\w`, `\\d` and `\\s` have Python's Unicode meaning; Hugging Face runs Oniguruma and
llama.cpp its own GPT-2 splitter, each with a slightly different idea of a letter or a
space. So `onig_pattern` writes each such class out as the explicit code-point ranges
Python gives it (computed once from Python itself), and `python_pattern` does the reverse
for a pattern in Oniguruma's syntax (GPT-2's `\\p{L}`/`\\p{N}`, from `unicodedata`).
llama.cpp cannot take a pattern: its `gpt-2` splitter is GPT-2's own, which agrees with
npllm's pattern except on a few characters (numerals that are not digits, such as '½' or
'Ⅻ', which Python counts as letters, and the separators U+001C-U+001F, which Python
counts as spaces).
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from typing import Any

from npllm.errors import DataError
from npllm.tokenizers import BPETokenizer, CharTokenizer

# GPT-2's pre-split regex as Hugging Face's ByteLevel pre-tokenizer and llama.cpp's
# `gpt-2` pre-tokenizer run it (Oniguruma syntax).
GPT2_ONIG_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
# Unicode White_Space, Oniguruma's \s (Python's \s adds U+001C-U+001F)
WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680)]
WHITE_SPACE += [(0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F)]
WHITE_SPACE += [(0x3000, 0x3000)]


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (encoder.py): printable Latin-1 bytes
    stand for themselves, the others are shifted to U+0100 and up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def token_string(data: bytes) -> str:
    """A byte string in GPT-2's printable form."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def token_bytes(text: str) -> bytes:
    """The bytes a GPT-2 token string stands for (DataError for a character outside the
    table: not a byte-level token)."""
    inverse = _unicode_to_bytes()
    try:
        return bytes(inverse[c] for c in text)
    except KeyError as e:
        raise DataError(
            f"token {text!r} holds {e.args[0]!r}, which is not a byte in GPT-2's byte-level "
            "form; only byte-level BPE tokenizers can be imported"
        ) from None


@functools.lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def bpe_vocab_and_merges(tok: BPETokenizer) -> tuple[list[str], list[tuple[str, str]]]:
    """The token strings in id order (specials as their text) and the merges as string
    pairs. A DataError when two ids stand for the same bytes: a string-keyed vocabulary
    (Hugging Face's, llama.cpp's) cannot tell them apart."""
    base = [token_string(tok.vocab[i]) for i in range(tok.base_vocab_size)]
    seen: dict[str, int] = {}
    for i, s in enumerate(base):
        if s in seen:
            raise DataError(
                f"tokens {seen[s]} and {i} are the same bytes {tok.vocab[i]!r} (two merges "
                "built them), which a vocabulary keyed by text cannot hold; train the "
                "tokenizer again"
            )
        seen[s] = i
    merges = [(base[a], base[b]) for a, b in tok.merges]
    return base + list(tok.specials), merges


# --- the pre-split pattern -------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _all_chars() -> str:
    return "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)


@functools.lru_cache(maxsize=64)
def _python_class(atom: str) -> tuple[tuple[int, int], ...]:
    """The code points a one-character Python regex (`\\w`, `[^\\W\\d_]`) matches, as ranges."""
    points = [ord(m.group()) for m in re.finditer(atom, _all_chars())]
    return tuple(_ranges(points))


def _ranges(points: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in points:
        if out and out[-1][1] == p - 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def _onig_class(ranges: tuple[tuple[int, int], ...]) -> str:
    def cp(c: int) -> str:
        return f"\\x{{{c:X}}}"

    return "[" + "".join(cp(a) if a == b else f"{cp(a)}-{cp(b)}" for a, b in ranges) + "]"


def _class_end(pattern: str, i: int) -> int:
    """The index just past the character class that opens at pattern[i] == '['."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    if j >= len(pattern):
        raise DataError(f"the tokenizer's pattern {pattern!r} has an unclosed '['")
    return j + 1


def onig_pattern(pattern: str) -> str:
    """A Python `re` pattern rewritten for Oniguruma (Hugging Face `tokenizers`) so that it
    splits every text the same way: each class whose meaning depends on the engine
    (`\\s \\S \\w \\W \\d \\D`, alone or inside brackets) becomes explicit ranges."""
    out, i = [], 0
    engine_classes = re.compile(r"\\[sSwWdD]")
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            atom = pattern[i : i + 2]
            out.append(_onig_class(_python_class(atom)) if engine_classes.match(atom) else atom)
            i += 2
        elif c == "[":
            j = _class_end(pattern, i)
            atom = pattern[i:j]
            out.append(_onig_class(_python_class(atom)) if engine_classes.search(atom) else atom)
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


@functools.lru_cache(maxsize=32)
def _category_ranges(cat: str) -> tuple[tuple[int, int], ...]:
    points = [
        c
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)).startswith(cat) and not 0xD800 <= c <= 0xDFFF
    ]
    return tuple(_ranges(points))


def _py_ranges(ranges: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> str:
    def cp(c: int) -> str:
        return re.escape(chr(c)) if 0x20 < c < 0x7F else f"\\U{c:08X}"

    return "".join(cp(a) if a == b else f"{cp(a)}-{cp(b)}" for a, b in ranges)


_ONIG_ATOM = re.compile(r"\\[pP]\{(\^?)(\w+)\}|\\[sS]|\\x\{([0-9A-Fa-f]+)\}|\\[wW]|\\.|.", re.S)


def python_pattern(pattern: str) -> str:
    """An Oniguruma pattern (a Hugging Face tokenizer's) rewritten for Python's `re`:
    `\\p{L}`-style general categories and `\\s`/`\\S` (Unicode White_Space) become explicit
    ranges, `\\x{...}` a Python escape. `\\w`, whose meaning differs, is refused."""
    out: list[str] = []
    depth = 0  # inside a bracket class: ranges go in bare
    for m in _ONIG_ATOM.finditer(pattern):
        tok = m.group()
        if m.group(2) is not None:
            negated = (tok[1] == "P") != (m.group(1) == "^")
            cat = m.group(2)
            cat = {"Letter": "L", "Number": "N", "Punctuation": "P", "Symbol": "S"}.get(cat, cat)
            if not re.fullmatch(r"[LMNPSZC][a-z]?", cat):
                raise DataError(f"the tokenizer's regex uses \\p{{{cat}}}, which npllm cannot read")
            body = _py_ranges(_category_ranges(cat))
        elif tok in ("\\s", "\\S"):
            negated, body = tok == "\\S", _py_ranges(WHITE_SPACE)
        elif m.group(3) is not None:
            out.append(f"\\U{int(m.group(3), 16):08X}")
            continue
        elif tok in ("\\w", "\\W"):
            raise DataError(
                "the tokenizer's regex uses \\w, which Oniguruma and Python define "
                "differently; npllm cannot reproduce its splits"
            )
        else:
            if tok == "[" and not (out and out[-1] == "\\"):
                depth += 1
            elif tok == "]" and depth:
                depth -= 1
            out.append(tok)
            continue
        if depth and negated:
            raise DataError("the tokenizer's regex negates a class inside brackets; unsupported")
        out.append(body if depth else f"[{'^' if negated else ''}{body}]")
    return "".join(out)


# --- Hugging Face tokenizer.json -------------------------------------------------------


def hf_tokenizer_json(tok: BPETokenizer | CharTokenizer) -> dict[str, Any]:
    """The tokenizer as Hugging Face `tokenizers` saves one (tokenizer.json): byte-level
    BPE with npllm's pattern split before the byte mapping, or for a char tokenizer a
    word-level model over single characters; the specials as added tokens."""
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in tok.specials.items()
    ]
    if isinstance(tok, CharTokenizer):
        model = {
            "type": "WordLevel",
            "vocab": {c: i for i, c in enumerate(tok.chars)},
            "unk_token": "<unk>",
        }
        split = {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated"}
        pre = {"type": "Sequence", "pretokenizers": [{**split, "invert": False}]}
        decoder: dict[str, Any] = {"type": "Fuse"}
    else:
        vocab, merges = bpe_vocab_and_merges(tok)
        model = {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {s: i for i, s in enumerate(vocab[: tok.base_vocab_size])},
            "merges": [list(m) for m in merges],
        }
        byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
        pre = {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": onig_pattern(tok.pattern)},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", **byte_level},
            ],
        }
        decoder = {"type": "ByteLevel", **byte_level}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": None,
        "decoder": decoder,
        "model": model,
    }


def from_hf_tokenizer_json(d: dict[str, Any]) -> tuple[BPETokenizer, list[int]]:
    """A byte-level BPE tokenizer.json -> (npllm tokenizer, hf_ids) where hf_ids[i] is the
    Hugging Face id of npllm id i (bytes, then merges in order, then the added tokens):
    the embedding rows are reordered by it."""
    model = d.get("model") or {}
    if model.get("type") != "BPE":
        raise DataError(
            f"the tokenizer is a {model.get('type')!r} model; only byte-level BPE "
            "(GPT-2's kind) can be imported"
        )
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise DataError(
            "the tokenizer marks word pieces (a prefix or suffix); npllm's BPE does not"
        )
    if d.get("normalizer"):
        raise DataError("the tokenizer normalizes text first, which npllm's BPE does not do")
    pattern = _hf_split_pattern(d.get("pre_tokenizer"))
    vocab: dict[str, int] = model["vocab"]
    raw = model.get("merges", [])
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw]
    ids_of: dict[bytes, int] = {}
    for s, i in vocab.items():
        ids_of.setdefault(token_bytes(s), i)
    table = bytes_to_unicode()
    hf_ids, npllm_of = [], {}
    for b in range(256):
        if table[b] not in vocab:
            raise DataError(f"the tokenizer has no token for byte {b}; it is not byte-level")
        hf_ids.append(vocab[table[b]])
        npllm_of[table[b]] = b
    merges = []
    for a, b in pairs:
        if a not in npllm_of or b not in npllm_of:
            raise DataError(f"merge {a!r} {b!r} uses a token no earlier merge built")
        joined = a + b
        if joined in npllm_of:
            raise DataError(f"two merges build {joined!r}; npllm's BPE gives each merge its own id")
        if joined not in vocab:
            raise DataError(f"merge {a!r} {b!r} builds {joined!r}, which is not in the vocabulary")
        merges.append((npllm_of[a], npllm_of[b]))
        npllm_of[joined] = 256 + len(merges) - 1
        hf_ids.append(vocab[joined])
    specials = []
    for t in sorted(d.get("added_tokens", []), key=lambda t: t["id"]):
        if t["content"] in npllm_of:
            continue
        specials.append(t["content"])
        hf_ids.append(t["id"])
    left = set(vocab.values()) - set(hf_ids)
    if left:
        i = min(left)
        s = next(s for s, j in vocab.items() if j == i)
        raise DataError(
            f"vocabulary token {i} ({s!r}) is neither a byte, a merge's result nor an added "
            "token; npllm's BPE cannot produce it"
        )
    return BPETokenizer(merges, pattern, specials), hf_ids


def _hf_split_pattern(pre: Any) -> str:
    """The Python pattern equivalent to a tokenizer.json's pre-tokenizer (GPT-2's
    ByteLevel with its regex, or a Split by a regex followed by a plain ByteLevel)."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    steps = [s for s in steps if s]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        byte_level, onig = steps[0], GPT2_ONIG_PATTERN
    elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split, byte_level = steps
        onig = (split.get("pattern") or {}).get("Regex")
        if onig is None or split.get("invert") or split.get("behavior") != "Isolated":
            raise DataError("the tokenizer splits text in a way npllm cannot reproduce")
    else:
        raise DataError(
            f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is not GPT-2's "
            "byte-level split; npllm cannot reproduce it"
        )
    if byte_level.get("add_prefix_space"):
        raise DataError("the tokenizer adds a space before the text; npllm's BPE does not")
    return python_pattern(onig)
