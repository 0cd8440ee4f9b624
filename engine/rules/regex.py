"""PostgreSQL regular expressions (ARE, the `~` operator), checked without a database.

Rules run their regexes in PostgreSQL, whose dialect differs from Python's `re`: `\\y` is a
word boundary and `\\b` a backspace, `[[:alpha:]]` is a class, `(?P<name>…)`, `(?i:…)`,
atomic groups and possessive quantifiers do not exist, bounds stop at 255, and a
look-behind may have any width. `check_regex` therefore scans the pattern the way
PostgreSQL's lexer does (src/backend/regex/regc_lex.c), translates it to Python syntax and
lets `re.compile` find what is left (unbalanced parentheses, bad back references).

It never refuses a pattern PostgreSQL accepts (a test fuzzes both against a real server);
the rare pattern PostgreSQL refuses that slips through is caught by `check_regexes_in_db`,
which `engine rules apply` always runs.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from engine.exceptions import RuleIssue

if TYPE_CHECKING:
    import psycopg

    from engine.rules.automation import Automation

# Python stand-ins for PostgreSQL's named classes: only their validity matters here.
_CLASSES = {
    "alnum": r"a-zA-Z0-9",
    "alpha": r"a-zA-Z",
    "blank": r" \t",
    "cntrl": r"\x00-\x1f",
    "digit": r"0-9",
    "graph": r"!-~",
    "lower": r"a-z",
    "print": r" -~",
    "punct": r"!-/",
    "space": r"\s",
    "upper": r"A-Z",
    "xdigit": r"0-9a-fA-F",
    "word": r"\w",
}
_EMBEDDED_OPTIONS = set("bceimnpqstwx")
_SIMPLE_ESCAPES = {"a": 0x07, "b": 0x08, "B": 0x5C, "e": 0x1B, "f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B}
_CLASS_ESCAPES = {"d", "D", "s", "S", "w", "W"}
_CONSTRAINT_ESCAPES = {"A": r"\A", "Z": r"\Z", "m": r"\b", "M": r"\b", "y": r"\b", "Y": r"\B"}
_DUP_MAX = 255  # PostgreSQL's RE_DUP_MAX
_CHR_MAX = 0x7FFFFFFE  # PostgreSQL's largest character code in an escape
_HEX = set("0123456789abcdefABCDEF")


class RegexError(ValueError):
    """A pattern PostgreSQL would refuse; the message is in PostgreSQL's words where it has them."""


def check_regex(pattern: str) -> None:
    """Raise RegexError if PostgreSQL's `~` would refuse `pattern`.

    >>> check_regex(r"^sweep-\\d+$")
    >>> check_regex("(?P<n>x)")
    Traceback (most recent call last):
    ...
    engine.rules.regex.RegexError: named groups (?P<…>) are not supported by PostgreSQL
    """
    if "\x00" in pattern:
        raise RegexError("NUL characters are not allowed")
    translated = _Scanner(pattern).translate()
    if translated is None:  # a literal (***= or (?q)) or a flavour we leave to the database
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            re.compile(translated)
    except re.error as exc:
        if "look-behind requires fixed-width" in str(exc):
            return  # PostgreSQL allows look-behinds of any width
        raise RegexError(_python_message(exc)) from None
    except (OverflowError, RecursionError, MemoryError):
        raise RegexError("regular expression too complex") from None


def _python_message(exc: re.error) -> str:
    text = str(exc.msg)
    if "missing )" in text or "unbalanced parenthesis" in text:
        return "parentheses () not balanced"
    if "group reference" in text or "open group" in text or "unknown group" in text:
        return "invalid backreference number"
    if "nothing to repeat" in text or "multiple repeat" in text:
        return "quantifier operand invalid"
    return text


class _Scanner:
    """One pass over an ARE, emitting the equivalent Python pattern."""

    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0
        self.out: list[str] = []
        self.expanded = False
        # capture groups as PostgreSQL numbers them (none inside look-arounds)
        self.opened = 0
        self.closed: set[int] = set()
        self.stack: list[str] = []  # "capture:<n>", "group" or "look"
        self.lookaround_depth = 0
        # what a quantifier would apply to: None (nothing quantifiable), "atom", "quant", "lazy"
        self.last: str | None = None

    # -- helpers -----------------------------------------------------------------------
    def _peek(self, offset: int = 0) -> str:
        j = self.i + offset
        return self.p[j] if j < len(self.p) else ""

    def _eof(self) -> bool:
        return self.i >= len(self.p)

    @staticmethod
    def _char(code: int) -> str:
        return f"\\U{min(code, 0x10FFFF):08x}"

    # -- prefix ------------------------------------------------------------------------
    def translate(self) -> str | None:
        p = self.p
        if p.startswith("***="):
            return None
        if p.startswith("***:"):
            self.i = 4
        if self._peek() == "(" and self._peek(1) == "?" and self._peek(2) in _EMBEDDED_OPTIONS:
            end = p.find(")", self.i)
            letters = p[self.i + 2 : end] if end != -1 else p[self.i + 2 :]
            if end == -1 or not set(letters) <= _EMBEDDED_OPTIONS:
                raise RegexError("invalid embedded option")
            self.i = end + 1
            flavour = "a"
            for letter in letters:
                if letter in "bqe":
                    flavour = letter
                elif letter == "x":
                    self.expanded = True
                elif letter == "t":
                    self.expanded = False
            if flavour == "q":
                return None
            if flavour in "be":  # BRE/ERE: rare enough to leave to the database check
                return None
        self._body()
        return "".join(self.out)

    # -- body --------------------------------------------------------------------------
    def _body(self) -> None:
        while not self._eof():
            c = self.p[self.i]
            if self.expanded and c in " \t\n\r\f\v":
                self.i += 1
            elif self.expanded and c == "#":
                end = self.p.find("\n", self.i)
                self.i = len(self.p) if end == -1 else end + 1
            elif c == "(":
                self._open()
            elif c == ")":
                self._close()
            elif c == "|":
                self.out.append("|")
                self.last = None
                self.i += 1
            elif c in "^$":
                self.out.append(c)
                self.last = None
                self.i += 1
            elif c == ".":
                self._atom(".")
                self.i += 1
            elif c == "[":
                self._bracket()
            elif c == "\\":
                self._escape()
            elif c in "*+?":
                self._quantifier(c)
                self.i += 1
            elif c == "{" and self._peek(1).isascii() and self._peek(1).isdigit():
                self._bound()  # `{` not followed by a digit is an ordinary character
            else:
                self._atom(re.escape(c))
                self.i += 1
        if self.stack:
            raise RegexError("parentheses () not balanced")

    def _atom(self, text: str) -> None:
        self.out.append(text)
        self.last = "atom"

    def _quantifier(self, text: str) -> None:
        if self.last == "atom":
            self.last = "quant"
        elif self.last == "quant" and text == "?":
            self.last = "lazy"
        else:
            raise RegexError("quantifier operand invalid")
        self.out.append(text)

    def _bound(self) -> None:
        start = self.i + 1
        end = start
        body = ""
        while end < len(self.p) and (
            self.p[end].isascii() and self.p[end].isdigit() or self.p[end] == "," or self.expanded and self.p[end].isspace()
        ):
            body += "" if self.p[end].isspace() else self.p[end]
            end += 1
        if end >= len(self.p):
            raise RegexError("braces {} not balanced")
        if self.p[end] != "}":
            raise RegexError("invalid repetition count(s)")
        low, comma, high = body.partition(",")
        if "," in high:
            raise RegexError("invalid repetition count(s)")
        # long digit strings are out of range anyway (and int() refuses thousands of digits)
        lo = int(low) if len(low) <= 9 else _DUP_MAX + 1
        hi = (int(high) if len(high) <= 9 else _DUP_MAX + 1) if high else None
        if lo > _DUP_MAX or (hi is not None and (hi > _DUP_MAX or hi < lo)):
            raise RegexError("invalid repetition count(s)")
        text = "{" + str(lo) + ("," if comma else "") + (str(hi) if hi is not None else "") + "}"
        self._quantifier(text)
        self.i = end + 1

    def _open(self) -> None:
        p, i = self.p, self.i
        if self._peek(1) != "?":
            if self.lookaround_depth:  # parentheses inside look-arounds never capture
                self.stack.append("group")
                self.out.append("(?:")
            else:
                self.opened += 1
                self.stack.append(f"capture:{self.opened}")
                self.out.append("(")
            self.last = None
            self.i += 1
            return
        rest = p[i + 2 : i + 4]
        if rest.startswith(":"):
            self.stack.append("group")
            self.out.append("(?:")
            self.i += 3
        elif rest[:1] in ("=", "!") or rest in ("<=", "<!"):
            self.stack.append("look")
            self.lookaround_depth += 1
            kind = rest[:1] if rest[:1] in ("=", "!") else rest
            self.out.append("(?" + kind)
            self.i += 2 + len(kind)
        elif rest.startswith("#"):
            # A comment is invisible: it does not even end the previous atom.
            end = p.find(")", i)
            self.i = len(p) if end == -1 else end + 1
            return
        elif rest.startswith("P") or (rest.startswith("<") and rest not in ("<=", "<!")):
            raise RegexError("named groups (?P<…>) are not supported by PostgreSQL")
        elif rest.startswith(">"):
            raise RegexError("atomic groups (?>…) are not supported by PostgreSQL")
        elif rest[:1] and rest[:1] in _EMBEDDED_OPTIONS | set("aiLmsux-"):
            raise RegexError("embedded options such as (?i) are only allowed at the very start of the pattern")
        else:
            raise RegexError("quantifier operand invalid")
        self.last = None

    def _close(self) -> None:
        if not self.stack:
            raise RegexError("parentheses () not balanced")
        kind = self.stack.pop()
        self.out.append(")")
        self.i += 1
        if kind == "look":
            self.lookaround_depth -= 1
            self.last = None  # PostgreSQL cannot quantify a constraint
            return
        if kind.startswith("capture:"):
            self.closed.add(int(kind.split(":")[1]))
        self.last = "atom"

    # -- escapes -----------------------------------------------------------------------
    def _escape(self) -> None:
        """An escape outside brackets: a character, a class, a constraint or a back reference."""
        kind, text = self._read_escape(in_bracket=False)
        if kind == "constraint":
            self.out.append(text)
            self.last = None
        else:
            self._atom(text)

    def _read_escape(self, *, in_bracket: bool) -> tuple[str, str]:
        """Consume `\\…` at self.i; return (kind, python text) with kind char/class/constraint/backref."""
        p = self.p
        self.i += 1
        if self._eof():
            raise RegexError("invalid escape \\ sequence")
        c = p[self.i]
        self.i += 1
        if not c.isalnum() or not c.isascii():
            return "char", self._char(ord(c))
        if c in _SIMPLE_ESCAPES:
            return "char", self._char(_SIMPLE_ESCAPES[c])
        if c == "c":
            if self._eof():
                raise RegexError("invalid escape \\ sequence")
            ctrl = ord(p[self.i]) & 0x1F
            self.i += 1
            return "char", self._char(ctrl)
        if c in _CLASS_ESCAPES:
            return "class", "\\" + c
        if c in ("u", "U", "x"):
            return "char", self._char(self._hex(c))
        if c.isdigit():
            return self._digits(c, in_bracket=in_bracket)
        if c in _CONSTRAINT_ESCAPES and not in_bracket:
            return "constraint", _CONSTRAINT_ESCAPES[c]
        raise RegexError("invalid escape \\ sequence")

    def _hex(self, letter: str) -> int:
        want = {"u": (4, 4), "U": (8, 8), "x": (1, 8)}[letter]
        j = self.i
        while j < len(self.p) and j - self.i < want[1] and self.p[j] in _HEX:
            j += 1
        if j - self.i < want[0]:
            raise RegexError("invalid escape \\ sequence")
        value = int(self.p[self.i : j], 16)
        self.i = j
        if value > _CHR_MAX:
            raise RegexError("invalid escape \\ sequence")
        return value

    def _digits(self, first: str, *, in_bracket: bool) -> tuple[str, str]:
        """PostgreSQL's rule: one digit, or a number not above the groups opened so far, is
        a back reference; anything else is an octal character code."""
        start = self.i - 1
        j = self.i
        while j < len(self.p) and j - start < 255 and self.p[j].isascii() and self.p[j].isdigit():
            j += 1
        number = int(self.p[start:j])
        if first != "0" and (j == start + 1 or number <= self.opened):
            if in_bracket:
                raise RegexError("invalid escape \\ sequence")
            if self.lookaround_depth:
                raise RegexError("back references are not allowed inside look-ahead or look-behind")
            if number not in self.closed:
                raise RegexError("invalid backreference number")
            self.i = j
            return "backref", f"(?:\\{number})"
        j = start
        while j < len(self.p) and j - start < 3 and self.p[j] in "01234567":
            j += 1
        if j == start:  # `\8`-like after a failed back reference
            raise RegexError("invalid backreference number")
        value = int(self.p[start:j], 8)
        if value > 0xFF:
            j -= 1
            value >>= 3
        self.i = j
        return "char", self._char(value)

    # -- bracket expressions -----------------------------------------------------------
    def _bracket(self) -> None:
        p = self.p
        for boundary, text in (("[[:<:]]", r"\b"), ("[[:>:]]", r"\b")):
            if p.startswith(boundary, self.i):
                self.i += len(boundary)
                self.out.append(text)
                self.last = None
                return
        self.i += 1
        negate = self._peek() == "^"
        if negate:
            self.i += 1
        items: list[tuple[str, Any]] = []  # ("char", code) | ("set", python text) | ("dash", None)
        first = True
        while True:
            if self._eof():
                raise RegexError("brackets [] not balanced")
            c = p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "[" and self._peek(1) in (":", ".", "="):
                items.append(self._bracket_element())
            elif c == "\\":
                kind, text = self._read_escape(in_bracket=True)
                if kind == "class":
                    items.append(("set", text))
                else:
                    items.append(("char", _code_of(text)))
            else:
                items.append(("dash", None) if c == "-" else ("char", ord(c)))
                self.i += 1
        self._atom(("[^" if negate else "[") + _bracket_to_python(items) + "]")

    def _bracket_element(self) -> tuple[str, Any]:
        p = self.p
        delim = p[self.i + 1]
        end = p.find(delim + "]", self.i + 2)
        if end == -1:
            raise RegexError("brackets [] not balanced")
        name = p[self.i + 2 : end]
        self.i = end + 2
        if delim == ":":
            if name not in _CLASSES:
                raise RegexError("invalid character class")
            return ("set", _CLASSES[name])
        if len(name) == 1:
            return ("char", ord(name))
        # Multi-character names are PostgreSQL's named collating elements ("hyphen", "NUL");
        # any other run of letters is refused by the database check.
        if not name or not re.fullmatch(r"[A-Za-z][A-Za-z-]*", name):
            raise RegexError("invalid collating element")
        return ("char", ord("-") if name in ("hyphen", "hyphen-minus") else ord("x"))


def _code_of(text: str) -> int:
    return int(text[2:], 16)  # our own "\\UXXXXXXXX"


def _bracket_to_python(items: list[tuple[str, Any]]) -> str:
    """Check ranges the way PostgreSQL does, and write the set in Python syntax.

    Items are ("char", code), ("set", python text) or ("dash", None) for an unescaped `-`.
    """
    dash = ord("-")
    out: list[str] = []
    k, n = 0, len(items)
    while k < n:
        kind, value = items[k]
        if k + 2 < n and items[k + 1][0] == "dash":
            hi_kind, hi = items[k + 2]
            lo = dash if kind == "dash" else value
            hi = dash if hi_kind == "dash" else hi
            if kind == "set" or hi_kind == "set" or hi < lo:
                raise RegexError("invalid character range")
            out.append(_Scanner._char(lo) + "-" + _Scanner._char(hi))
            k += 3
            if k + 1 < n and items[k][0] == "dash":  # `a-b-c`
                raise RegexError("invalid character range")
            continue
        out.append(value if kind == "set" else _Scanner._char(dash if kind == "dash" else value))
        k += 1
    return "".join(out)


# -- the rule's regexes, and the authoritative check in PostgreSQL ------------------------
def regexes_of(automation: Automation) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every regex of a rule with its field path, e.g. (("event", "alias_regex"), "^prod")."""
    if automation.scope.collection_regex is not None:
        yield ("scope", "collection_regex"), automation.scope.collection_regex
    for field in ("alias_regex", "tag_regex"):
        value = getattr(automation.event, field, None)
        if value is not None:
            yield ("event", field), value
    if automation.run_filter is not None and automation.run_filter.name_regex is not None:
        yield ("run_filter", "name_regex"), automation.run_filter.name_regex


def check_regexes_in_db(
    conn: psycopg.Connection, automation: Automation, *, file: str = "<rule>", line: int | None = None
) -> list[RuleIssue]:
    """Compile each regex of the rule in PostgreSQL (`SELECT '' ~ pattern`); one issue per refusal.

    Each check runs in its own savepoint, so a refusal never aborts the caller's transaction.
    """
    import psycopg
    from psycopg import errors as pgerrors

    from engine.db import query, translate

    issues = []
    for loc, pattern in regexes_of(automation):
        try:
            with conn.transaction():
                conn.execute(query("check_regex"), {"pattern": pattern})
        except pgerrors.InvalidRegularExpression as exc:  # SQLSTATE 2201B
            message = str(exc).strip().splitlines()[0]
            issues.append(RuleIssue(file, line, ".".join(loc), f"PostgreSQL refuses this regex: {message}"))
        except psycopg.Error as exc:
            raise translate(exc) from exc
    return issues
