"""The regexes of a rule, and what is checked where.

Rules' regexes run in PostgreSQL (the `~` operator, its ARE dialect: `\\y` is a word
boundary, `\\b` a backspace, `[[:alpha:]]` a class; Python's `(?P<name>…)` does not exist).
PostgreSQL is therefore the one judge of a pattern, and it is asked directly:

- without a database (the rule models, `engine rules validate`): only what PostgreSQL
  cannot be asked about. A NUL character cannot travel in a PostgreSQL text value at all
  (the driver refuses it before the regex is compiled), so it is refused here; the length
  bound is on the field (`fields.Regex`). Nothing else is refused without a database, so a
  pattern PostgreSQL accepts is never refused.
- with a database: `engine.automations.check_regexes_in_db` compiles each pattern
  (`SELECT '' ~ pattern`) on every `engine rules apply`, `engine.automations.apply` and
  `engine rules validate --check-db`; a refusal is reported in PostgreSQL's words with the
  file, line and field, plus a hint (`postgres_hint`) when a Python-only construct is the
  likely cause.
- probable mistakes in patterns PostgreSQL accepts (`\\b`, an unanchored name) are
  warnings of the linter (`engine.rules.lint`), never errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.rules.automation import Automation


class RegexError(ValueError):
    """A pattern refused without asking PostgreSQL."""


def check_regex(pattern: str) -> None:
    """Raise RegexError for what cannot even reach PostgreSQL's regex compiler.

    >>> check_regex(r"^sweep-\\d+$")
    >>> check_regex("(?P<n>x)")  # refused by PostgreSQL on apply, not here
    >>> check_regex("a\\x00b")
    Traceback (most recent call last):
    ...
    engine.rules.regex.RegexError: NUL characters are not allowed
    """
    if "\x00" in pattern:
        raise RegexError("NUL characters are not allowed")


# Python-only constructs, by the text that gives them away, and what to write instead.
_PYTHON_ONLY = (
    ("(?P<", "named groups (?P<name>…) are Python syntax: use a plain group (…)"),
    ("(?>", "atomic groups (?>…) are Python syntax: use a plain group (…)"),
    ("*+", "possessive quantifiers (*+, ++, ?+) are Python syntax: use * + ?"),
    ("++", "possessive quantifiers (*+, ++, ?+) are Python syntax: use * + ?"),
    ("?+", "possessive quantifiers (*+, ++, ?+) are Python syntax: use * + ?"),
)
_OPTION_LETTERS = set("aiLmsux")


def postgres_hint(pattern: str) -> str | None:
    """A hint for a pattern PostgreSQL refused, when a Python habit is the likely cause.

    Only ever added to PostgreSQL's own refusal, so a loose textual match is harmless.

    >>> postgres_hint("a(?i)b")
    'embedded options such as (?i) go at the very start of the pattern in PostgreSQL'
    >>> postgres_hint("(prod") is None
    True
    """
    for text, hint in _PYTHON_ONLY:
        if text in pattern:
            return hint
    start = pattern.find("(?<")
    if start != -1 and pattern[start + 3 : start + 4] not in ("=", "!"):
        return "named groups (?<name>…) are Python syntax: use a plain group (…)"
    for i in range(1, len(pattern) - 2):
        if pattern.startswith("(?", i) and pattern[i + 2] in _OPTION_LETTERS:
            return "embedded options such as (?i) go at the very start of the pattern in PostgreSQL"
    return None


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
