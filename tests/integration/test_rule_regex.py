"""The load-time regex check agrees with PostgreSQL, which runs the rules' regexes.

Required: it never refuses a pattern PostgreSQL accepts. Wanted (checked on a corpus):
it refuses what PostgreSQL refuses, so `engine rules validate` needs no database.
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.rules.regex import RegexError, check_regex

CORPUS = [
    r"^sweep-", r"(?<=a)b", r"(?<=a+)b", r"(?<!a)b", r"(?=a)", r"(?P<n>a)", r"(?<n>a)", r"(?i)abc", r"a(?i)b",
    r"(?i:a)", r"a*+", r"(?>a)", r"a**", r"a{,3}", r"a{3,}", r"a{2,1}", r"\y", r"\m", r"\bfoo", r"\q", r"\e",
    r"\B", r"[[:alpha:]]", r"[[:foo:]]", r"[[.a.]]", r"[[=a=]]", r"[[:<:]]", r"\d+", r"[\d]", r"\x41", r"\x4142",
    r"\u0041", r"\cA", r"\0", r"(", r")", r"[", r"]", r"a{1000}", r"a{256}", r"a{255}", r"(?#c)a", r"***:a",
    r"***=(", r"(?c)a", r"(?a)a", r"(?x) a b", r"\1(a)", r"(a)\1", r"(?:a)", r"\Z", r"\A", r"\z", r"a|", r"",
    r"[a-]", r"[z-a]", r"(?=(a)\1)", r"\k<n>", r"a{1,2}{3}", r"a??", r"\p{L}", r"\G", r"[\w-z]", r"[^]a]",
    r"[]a]", r"a{", r"a{1", r"{1}", r"*a", r"a{1}?", r"(?i)(?x)a", r"\777", r"\8", r"\10", r"[\b]", r"\c",
    "a\\", r"(?i", r"(?", r"\Y", r"\M", r"\x", r"(?m)a", r"(?n)a", r"(?w)a", r"(?q)(", r"(?ib)a", r"***a",
    r"\u004", r"\U0041", r"\xFFFFFFFF", r"[[:<:]x]", r"[[.hyphen.]]", r"[[:alpha:]-z]", r"(?=a)*", r"a{x}",
    r"a{1,x}", r"(a\1)", r"(?=(a))\1", r"(?)a", r"[]", r"[^]", r"[a-b-c]", r"[\y]", r"[\1]", r"[\10]",
    r"[a-\d]", r"[--z]", r"[%--]", r"(?x)a{1, 2}", r"(?#x)*", r"(a)(?#x)*", r"a|*", r"()*", r"\A*", r"\c\\",
    r"[\c]", r"[[.].]]", r"[\u0041-\u0040]", r"(?c)(?i)a", r"a{256,}", r"a{0256}", r"^*", r"$*", r"\y*",
]  # fmt: skip


def postgres_refuses(conn: psycopg.Connection, pattern: str) -> bool:
    try:
        conn.execute("SELECT '' ~ %s", (pattern,))
    except psycopg.errors.InvalidRegularExpression:
        return True
    return False


def python_refuses(pattern: str) -> bool:
    try:
        check_regex(pattern)
    except RegexError:
        return True
    return False


def test_corpus_agrees_with_postgres(conn):
    disagreements = [p for p in CORPUS if postgres_refuses(conn, p) != python_refuses(p)]
    assert disagreements == []


PIECES = st.sampled_from(
    list("a()[]{}^$\\*+?|.:=!<>#-,0129iybBdwxmqcuUPe ") + ["[:alpha:]", "[.", ".]", "(?", "(?:", "(?=", "(?<=", "\\1", "{1,2}", "***:"]
)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(PIECES, min_size=1, max_size=12).map("".join))
def test_never_refuses_what_postgres_accepts(conn, pattern):
    if python_refuses(pattern):
        assert postgres_refuses(conn, pattern), pattern


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(PIECES, min_size=1, max_size=8).map("".join))
def test_never_refuses_what_postgres_accepts_quick(conn, pattern):
    if python_refuses(pattern):
        assert postgres_refuses(conn, pattern), pattern
