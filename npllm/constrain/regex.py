"""A regular-expression subset: parser to a small syntax tree, and characters to UTF-8.

The subset (every pattern is anchored: the whole output must match, as `re.fullmatch`):
- literals, and escapes `\\n \\t \\r \\f \\v \\xhh \\uhhhh`; a backslash before any other
  punctuation character means that character;
- classes `[abc] [a-z] [^...]`, the shorthands `\\d \\w \\s` and their negations `\\D \\W \\S`
  (ASCII meanings: `[0-9]`, `[A-Za-z0-9_]`, `[ \\t\\n\\r\\f\\v]`, as Python's `re.ASCII`),
  and `.` (any character but a newline);
- groups `( )` and `(?: )`, alternation `|`, and the quantifiers `* + ? {m} {m,} {m,n}`;
- `^` at the very start and `$` at the very end (they change nothing: matches are whole).
Anything else (look-arounds, back-references, `\\b`, lazy quantifiers, flags) is refused
with a `GrammarError` naming it.

Characters are Unicode code points; `utf8_sequences` turns a range of them into ranges
of bytes, so that the automaton (`npllm.constrain.automaton`) can run on the bytes that
byte-level BPE tokens are made of (the method of RE2 and Rust's regex-syntax).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from npllm.errors import GrammarError

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)  # not characters: UTF-8 cannot encode them


@dataclass(frozen=True)
class Chars:
    """One character out of sorted, disjoint, inclusive code-point ranges."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Seq:
    """The items one after the other (no items: the empty string)."""

    items: tuple


@dataclass(frozen=True)
class Alt:
    """Any one of the options."""

    options: tuple


@dataclass(frozen=True)
class Repeat:
    """`item` between `min` and `max` times (`max` None: unbounded)."""

    item: object
    min: int
    max: int | None


Node = Chars | Seq | Alt | Repeat


def literal(text: str) -> Seq:
    """The node matching exactly `text`."""
    return Seq(tuple(Chars(((ord(c), ord(c)),)) for c in text))


def normalize(ranges) -> tuple[tuple[int, int], ...]:
    """Sort and merge overlapping or adjacent ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def complement(ranges) -> tuple[tuple[int, int], ...]:
    """Every character (surrogates excluded) not in `ranges`."""
    out, nxt = [], 0
    for lo, hi in normalize(list(ranges) + [SURROGATES]):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return tuple(out)


DIGIT = ((ord("0"), ord("9")),)
WORD = normalize([(ord("0"), ord("9")), (ord("A"), ord("Z")), (ord("_"), ord("_")), (97, 122)])
SPACE = normalize([(ord(c), ord(c)) for c in " \t\n\r\f\v"])
SHORTHANDS = {
    "d": DIGIT,
    "w": WORD,
    "s": SPACE,
    "D": complement(DIGIT),
    "W": complement(WORD),
    "S": complement(SPACE),
}
CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
ANY_BUT_NEWLINE = complement([(10, 10)])


class _Parser:
    """Recursive descent over the grammar
    alt := seq ('|' seq)*;  seq := (atom quantifier*)*;
    atom := '(' ['?:'] alt ')' | '[' class ']' | '.' | escape | literal."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0

    def fail(self, what: str) -> GrammarError:
        return GrammarError(
            f"regex {self.p!r}: {what} at position {self.i}; the supported subset is "
            "literals, classes, . * + ? {m,n} | ( ) (see npllm.constrain.regex)"
        )

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def take(self) -> str:
        c = self.p[self.i]
        self.i += 1
        return c

    def parse(self) -> Node:
        if self.peek() == "^":
            self.i += 1
        node = self.alt()
        if self.peek() == "$" and self.i == len(self.p) - 1:
            self.i += 1
        if self.i != len(self.p):
            c = self.peek()
            raise self.fail("unbalanced ')'" if c == ")" else f"{c!r} is not supported here")
        return node

    def alt(self) -> Node:
        options = [self.seq()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.seq())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def seq(self) -> Node:
        items = []
        while self.peek() not in (None, "|", ")") and not (
            self.peek() == "$" and self.i == len(self.p) - 1
        ):
            items.append(self.quantified(self.atom()))
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def quantified(self, node: Node) -> Node:
        while True:
            c = self.peek()
            if c == "*":
                lo, hi = 0, None
            elif c == "+":
                lo, hi = 1, None
            elif c == "?":
                lo, hi = 0, 1
            elif c == "{":
                lo, hi = self.braces()
            else:
                return node
            if c != "{":
                self.i += 1
            if self.peek() in ("?", "+"):
                raise self.fail("lazy and possessive quantifiers are not supported")
            node = Repeat(node, lo, hi)

    def braces(self) -> tuple[int, int | None]:
        start = self.i
        end = self.p.find("}", start)
        body = self.p[start + 1 : end] if end > 0 else ""
        lo_s, comma, hi_s = body.partition(",")
        if not lo_s.isdigit() or not (hi_s.isdigit() or hi_s == ""):
            raise self.fail("'{' starts no {m}, {m,} or {m,n} quantifier (escape it as \\{)")
        lo = int(lo_s)
        hi = lo if not comma else (int(hi_s) if hi_s else None)
        if hi is not None and hi < lo:
            raise self.fail(f"quantifier {{{body}}} has max < min")
        self.i = end + 1
        return lo, hi

    def atom(self) -> Node:
        c = self.take()
        if c == "(":
            if self.peek() == "?":
                if self.p.startswith("?:", self.i):
                    self.i += 2
                else:
                    raise self.fail("only (?: ) groups are supported (no look-arounds or flags)")
            node = self.alt()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.i += 1
            return node
        if c == "[":
            return Chars(self.char_class())
        if c == ".":
            return Chars(ANY_BUT_NEWLINE)
        if c == "\\":
            return Chars(self.escape(in_class=False))
        if c in "*+?{":
            self.i -= 1
            raise self.fail(f"nothing to repeat before {c!r}")
        if c in "^$":
            self.i -= 1
            raise self.fail(f"{c!r} is only supported at the very start or end")
        return Chars(((ord(c), ord(c)),))

    def escape(self, in_class: bool) -> tuple[tuple[int, int], ...]:
        if self.peek() is None:
            raise self.fail("the pattern ends with a lone backslash")
        c = self.take()
        if c in SHORTHANDS:
            return SHORTHANDS[c]
        if c in CONTROL_ESCAPES:
            o = ord(CONTROL_ESCAPES[c])
            return ((o, o),)
        if c in "xu":
            n = 2 if c == "x" else 4
            digits = self.p[self.i : self.i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {n} hex digits")
            self.i += n
            o = int(digits, 16)
            if SURROGATES[0] <= o <= SURROGATES[1]:
                raise self.fail("surrogate code points are not characters")
            return ((o, o),)
        if c.isalnum():
            raise self.fail(f"escape \\{c} is not supported")
        return ((ord(c), ord(c)),)

    def char_class(self) -> tuple[tuple[int, int], ...]:
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            if self.peek() is None:
                raise self.fail("missing ']'")
            c = self.take()
            if c == "]" and not first:
                break
            first = False
            if c == "\\":
                item = self.escape(in_class=True)
            elif c == "[" and self.peek() == ":":
                raise self.fail("POSIX classes [:name:] are not supported")
            else:
                item = ((ord(c), ord(c)),)
            if (
                self.peek() == "-"
                and self.i + 1 < len(self.p)
                and self.p[self.i + 1] != "]"
                and len(item) == 1
                and item[0][0] == item[0][1]
            ):
                self.i += 1
                d = self.take()
                end = self.escape(in_class=True) if d == "\\" else ((ord(d), ord(d)),)
                if len(end) != 1 or end[0][0] != end[0][1] or end[0][0] < item[0][0]:
                    raise self.fail("bad character range")
                item = ((item[0][0], end[0][0]),)
            ranges.extend(item)
        return complement(ranges) if negate else normalize(ranges)


def parse_regex(pattern: str) -> Node:
    """The syntax tree of `pattern` (the subset in this module's docstring)."""
    if not isinstance(pattern, str):
        raise GrammarError(f"a regex must be a string, got {type(pattern).__name__}")
    return _Parser(pattern).parse()


# -- characters to bytes ---------------------------------------------------------------

_UTF8_LENGTH_ENDS = (0x7F, 0x7FF, 0xFFFF, MAX_CODE_POINT)


def _encode(cp: int) -> bytes:
    return chr(cp).encode("utf-8")


def _split_same_length(lo: int, hi: int, out: list) -> None:
    """Byte-range sequences for [lo, hi], both encoded with the same number of bytes.
    A range is cut until each piece fixes a prefix and lets every later byte run over a
    whole continuation range; then its bytes pair up position by position."""
    n = len(_encode(lo))
    for i in range(1, n):
        m = (1 << (6 * i)) - 1  # the low bits carried by the last i bytes
        if lo & ~m != hi & ~m:
            if lo & m != 0:
                _split_same_length(lo, lo | m, out)
                _split_same_length((lo | m) + 1, hi, out)
                return
            if hi & m != m:
                _split_same_length(lo, (hi & ~m) - 1, out)
                _split_same_length(hi & ~m, hi, out)
                return
    out.append(tuple(zip(_encode(lo), _encode(hi))))


@lru_cache(maxsize=4096)  # pure; the same classes recur in every JSON string
def utf8_sequences(lo: int, hi: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """The UTF-8 encodings of the code points [lo, hi] (surrogates skipped), as a list of
    sequences of inclusive byte ranges: a byte string encodes a code point in the range
    exactly when it matches one sequence."""
    out: list = []
    for a, b in complement(complement([(lo, hi)])):  # drops the surrogates
        start = a
        for end in _UTF8_LENGTH_ENDS:
            if start > b:
                break
            if start <= end:
                _split_same_length(start, min(b, end), out)
                start = min(b, end) + 1
    return tuple(out)
