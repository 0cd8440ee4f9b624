"""Rules' regexes are judged by PostgreSQL, which runs them.

Without a database only NUL is refused (it cannot reach PostgreSQL's regex compiler at all),
so a pattern PostgreSQL accepts is never refused; with one, every refusal is reported at its
file, line and field in PostgreSQL's words, with a hint for Python-only constructs.
"""

from __future__ import annotations

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.automations import check_regexes_in_db
from engine.exceptions import RuleValidationError
from engine.rules import load_rules, parse_rules_text
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
        with conn.transaction():
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


def tag_rule(pattern: str) -> str:
    return yaml.safe_dump(
        {
            "name": "r",
            "scope": {"project": "acme/vision"},
            "event": {"type": "artifact_tag_added", "tag_regex": pattern},
            "action": {"type": "no_op"},
        },
        sort_keys=False,
    )


def test_every_refusal_of_postgres_is_reported_at_its_file_line_and_field(conn, tmp_path):
    refused = [p for p in CORPUS if postgres_refuses(conn, p)]
    assert refused and len(refused) < len(CORPUS)  # the corpus has both kinds
    for pattern in CORPUS:
        path = tmp_path / "r.yaml"
        text = tag_rule(pattern)
        path.write_text(text)
        line = 1 + next(n for n, written in enumerate(text.splitlines()) if "tag_regex:" in written)
        assert load_rules([path])  # never refused without the database
        if pattern not in refused:
            assert load_rules([path], conn)
            continue
        with pytest.raises(RuleValidationError) as exc:
            load_rules([path], conn)
        (issue,) = exc.value.issues
        assert (issue.file, issue.line, issue.field) == (str(path), line, "event.tag_regex"), pattern
        assert issue.message.startswith("PostgreSQL refuses this regex: invalid regular expression: "), (
            pattern
        )


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [
        ("(?P<n>a)", "named groups (?P<name>…) are Python syntax"),
        ("(?<n>a)", "named groups (?<name>…) are Python syntax"),
        ("(?>a)", "atomic groups (?>…) are Python syntax"),
        ("a*+", "possessive quantifiers"),
        ("a(?i)b", "embedded options such as (?i) go at the very start of the pattern in PostgreSQL"),
    ],
)
def test_a_python_habit_gets_a_hint(conn, pattern, hint):
    (rule,) = parse_rules_text(tag_rule(pattern))
    (issue,) = check_regexes_in_db(conn, rule.automation, file="r.yaml")
    assert issue.field == "event.tag_regex"
    assert hint in issue.message


def test_a_plain_refusal_has_no_hint(conn):
    (rule,) = parse_rules_text(tag_rule("(prod"))
    (issue,) = check_regexes_in_db(conn, rule.automation, file="r.yaml")
    assert (
        issue.message
        == "PostgreSQL refuses this regex: invalid regular expression: parentheses () not balanced"
    )


def test_the_corpus_reaches_postgres(conn):
    assert [p for p in CORPUS if python_refuses(p)] == []


PIECES = st.sampled_from(
    [
        *"a()[]{}^$\\*+?|.:=!<>#-,0129iybBdwxmqcuUPe ",
        *("[:alpha:]", "[.", ".]", "(?", "(?:", "(?=", "(?<=", "\\1", "{1,2}", "***:"),
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(PIECES, min_size=1, max_size=8).map("".join))
def test_any_pattern_is_loaded_and_judged_by_postgres_without_a_crash(conn, pattern):
    (rule,) = parse_rules_text(tag_rule(pattern))  # never refused without a database
    issues = check_regexes_in_db(conn, rule.automation, file="r.yaml")
    assert [i.field for i in issues] == (["event.tag_regex"] if postgres_refuses(conn, pattern) else [])
