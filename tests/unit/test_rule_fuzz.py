"""Fuzzing the rule loader: whatever the text, `parse_rules_text` / `load_rules` either load
rules that can be stored, or raise RuleValidationError whose every issue says where.

"Says where", precisely (what `check_issues` asserts of every RuleIssue):

* every issue names the file it was given (`str(issue)` starts with `<file>:`);
* every issue of a text has a line, within the text;
* an issue about a *value* (pydantic validation, a tag/alias/unreadable scalar under a key,
  a bad key inside a mapping) names the field: a path such as `event.window`,
  `action.payload.run` or `event.states[1]` that walks the document from its root — every
  part but the last exists, and the last exists too unless the message says it is missing
  ("field required") — and the line is the line of that key, inside its value, or (for a
  missing key) the first line of the mapping that lacks it;
* an issue without a field is about the document as a whole: a YAML syntax error, a document
  that is not a mapping, or a problem with the document itself or one of its top-level keys
  (a tag, an alias, a duplicate or non-text key at the root);
* messages are the loader's own words (never pydantic's "Input should ...", never the
  catch-all "cannot validate this rule"), and short even when the input is huge;
* reading problems (missing file, not UTF-8) name the file, and the line when there is one.

And a rule that loads can be stored: its canonical JSON and hash exist, and it loads back
equal from that JSON.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.exceptions import RuleIssue, RuleValidationError
from engine.rules import Automation, load_rules, parse_rules_text
from engine.rules.events import EVENT_TYPES
from engine.rules.loader import KNOWN_KEYS, MAX_DEPTH, _Composer

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {path.name: path.read_text() for path in sorted((REPO / "rules").glob("*.yaml"))}
FILE = "rules/fuzz.yaml"
MAX_MESSAGE = 600  # the longest worded message is the list of event types (~400 characters)

# Messages of issues that concern a whole document (no field to name).
DOCUMENT_LEVEL = re.compile(
    r"YAML syntax error: |YAML nested too deeply|a rule must be a mapping|unsupported YAML tag |YAML aliases |"
    r"cannot read |key .* is read as |keys must be plain text|a key must not be empty|duplicate key |YAML merge keys |"
    r"\\u[0-9a-f]{4} is half of a UTF-16"
)
# A quick pass in every test run; `test_everything_at_length` (slow) is the real search.
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the property -------------------------------------------------------------------------
def check_text(text: str, file: str = FILE) -> list[str]:
    """Load `text`; assert the property; return the issues as text (empty: it loaded)."""
    try:
        loaded = parse_rules_text(text, file)
    except RuleValidationError as exc:
        check_issues(exc.issues, text, file)
        return [str(issue) for issue in exc.issues]
    for rule in loaded:
        check_storable(rule.automation)
        assert rule.file == file and 1 <= rule.line <= max(1, len(text.splitlines()))
    return []


def check_storable(automation: Automation) -> None:
    data = automation.to_json()
    json.dumps(data, allow_nan=False).encode("utf-8")  # what the jsonb column receives
    assert len(automation.rule_hash()) == 64
    assert Automation.model_validate(data) == automation


def check_issues(issues: list[RuleIssue], text: str, file: str) -> None:
    assert issues, "RuleValidationError without issues"
    documents = _documents(text)
    last_line = max(1, len(text.splitlines()))
    for issue in issues:
        shown = str(issue)
        assert issue.file == file and shown.startswith(f"{file}:{issue.line}: "), shown
        assert issue.line is not None and 1 <= issue.line <= last_line, shown
        assert issue.message and len(issue.message) <= MAX_MESSAGE, shown[:500]
        assert not issue.message.startswith(("Input should", "cannot validate this rule")), shown
        if issue.message.startswith("nested more than"):
            # the document could not be composed: the field is the top-level key (or list
            # position) under which it happens, the line where the limit was crossed
            assert issue.field and not re.search(r"[.\[]", issue.field.removeprefix("[")), shown
        elif issue.field:
            assert f" {issue.field}: " in shown
            _check_field(issue, documents)
        else:
            assert DOCUMENT_LEVEL.match(issue.message), f"an issue without a field: {shown}"


def _documents(text: str) -> list[Node]:
    """The documents composed before any syntax error (the loader reports nothing after it)."""
    found: list[Node] = []
    try:
        loader = _Composer(text)  # the reader checks the characters here already
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                found.append(node)
    except yaml.YAMLError:
        pass
    return found


def _span(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.end_mark.line + 1


def _check_field(issue: RuleIssue, documents: list[Node]) -> None:
    """The field path walks one document from its root; the line belongs to where it ends."""
    candidates = [d for d in documents if _span(d)[0] <= issue.line <= _span(d)[1]] or documents
    outcomes = [_walk(doc, issue.field) for doc in candidates]
    assert any(outcome is not None for outcome in outcomes), f"field path does not exist: {issue}"
    for outcome in outcomes:
        if outcome is None:
            continue
        node, key_line, missing = outcome
        if missing and "field required" not in issue.message and "required" not in issue.message:
            # The last part may be absent only when the message is about it being absent, or
            # for cross-field problems that name the key that should (not) be there.
            continue
        start, end = _span(node)
        if issue.line == key_line or start <= issue.line <= end:
            return
    raise AssertionError(f"line of {issue} is not where its field is")


def _walk(root: Node, path: str) -> tuple[Node, int | None, bool] | None:
    """Follow `path` (`a.b[2].c`; keys may themselves hold dots) from `root`.

    Returns (deepest node reached, line of its key, whether the last part is missing), or
    None when a part other than the last does not exist.
    """
    node, key_line, rest = root, None, path
    while rest:
        if isinstance(node, SequenceNode) and (m := re.match(r"\[(\d+)\]", rest)):
            index = int(m.group(1))
            if index >= len(node.value):
                return None
            node, key_line, rest = node.value[index], None, rest[m.end() :].removeprefix(".")
            continue
        if isinstance(node, MappingNode):
            keys = [
                (name, k, v) for k, v in node.value if isinstance(k, ScalarNode)
                for name in [_joined(k.value)] if rest == name or rest.startswith((name + ".", name + "["))
            ]  # fmt: skip
            if keys:
                name, k, v = max(keys, key=lambda item: len(item[0]))
                node, key_line, rest = v, k.start_mark.line + 1, rest[len(name) :].removeprefix(".")
                continue
        # Not found: acceptable only for the last part (a missing key, or a key named by a
        # cross-field rule such as `scope.registry`), in a mapping.
        if isinstance(node, MappingNode) and "." not in rest and "[" not in rest:
            return node, key_line, True
        return None
    return node, key_line, False


def _joined(text: str) -> str:
    """A key as the loader reads it: JSON-style surrogate pairs joined into one character."""
    try:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        return text


# -- strategies: random documents -----------------------------------------------------------
RULE_WORDS = sorted(KNOWN_KEYS | set(EVENT_TYPES) | {"webhook", "slack", "no_op", "env"})
JUNK_KEYS = [
    "",
    " ",
    "<<",
    "~",
    "null",
    "true",
    "1",
    "-1",
    "1.5",
    "a.b",
    "x[0]",
    "é",
    "🙂",
    "\u202e",
    "name ",
    "NAME",
    "${x}",
]
KEYS = st.sampled_from(RULE_WORDS + JUNK_KEYS) | st.text(max_size=12)
INTERESTING = [
    "acme/vision", "acme", "a/b/c", "model", "accuracy", "system/cpu", "system.cpu", "system/", ">", "=>", "==",
    "avg", "median", "relative", "increase", "sideways", "failed", "killed", "crashed", "24h", "0s", "1h30m", "3651d",
    "-5m", "http://127.0.0.1:8765/x", "https://ci.example.com/hook", "ftp://x", "http://[::1", "http://a:99999/",
    "http://", "${run_name}", "${run_nme}", "${CI_TOKEN}", "${", "$${x}", "^prod$", "(prod", "(?<n>a)", "\\y", "[[:foo:]]",
    "a{1,2}{3}", "CI_TOKEN", "1BAD", "#ml-alerts", "x" * 300, "9" * 400, "9" * 5000, "1e400", "-0", ".nan", ".inf", "-.inf", "0x1f",
    "0o17", "1_000", "2024-05-01", "2001-12-14t21:59:43.10-05:00", "yes", "No", "~", "\u0000", "\ud83d", "tab\there",
    "line\nbreak", "\u2028", "\u0085", "é🙂\u202eעברית", "e\u0301",
]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, -(10**30), 10**400])
    | st.floats()
    | st.sampled_from(INTERESTING)
    | st.text(max_size=30)
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)
DECORATIONS = [
    "", "", "", "!!str ", "!!int ", "!!float ", "!!bool ", "!!null ", "!!binary ", "!!timestamp ", "!!set ", "!!omap ",
    "!!map ", "!!seq ", "!!python/object:os.system ", "!!python/object/apply:os.system ", "!!python/name:os.system ",
    "!custom ", "!<tag:yaml.org,2002:str> ", "&a ", "&b !!str ",
]  # fmt: skip


def emit_flow(value: Any, draw: Any, depth: int = 0) -> str:
    """Flow-style YAML of `value`, with random tags, anchors and aliases: often not valid."""
    prefix = draw(st.sampled_from(DECORATIONS))
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from(["*a", "*b", "*nowhere"]))
    if isinstance(value, dict):
        items = ", ".join(
            f"{emit_flow(k, draw, depth + 1)}: {emit_flow(v, draw, depth + 1)}" for k, v in value.items()
        )
        return prefix + "{" + items + "}"
    if isinstance(value, list):
        return prefix + "[" + ", ".join(emit_flow(v, draw, depth + 1) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return prefix + draw(
            st.sampled_from(
                {"nan": [".nan", ".NaN", "nan"], "inf": [".inf", ".Inf"], "-inf": ["-.inf"]}[str(value)]
            )
        )
    if isinstance(value, str):
        style = draw(st.sampled_from(["plain", "json", "single", "escaped"]))
        if style == "plain":
            return prefix + value
        if style == "single":
            return prefix + "'" + value.replace("'", "''") + "'"
        if style == "escaped":  # JSON escapes: emoji become \ud83d\ude00 pairs
            return prefix + json.dumps(value, ensure_ascii=True)
        return prefix + json.dumps(value, ensure_ascii=False)
    return prefix + (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def emit_block(value: Any, draw: Any) -> str:
    """Block-style YAML of `value` by PyYAML itself (valid, unless the value is odd)."""
    return yaml.safe_dump(
        value,
        default_flow_style=draw(st.sampled_from([False, None, True])),
        allow_unicode=draw(st.booleans()),
        sort_keys=False,
        width=draw(st.sampled_from([20, 80, 10**6])),
    )


@st.composite
def yaml_texts(draw: Any) -> str:
    value = draw(STRUCTURES | st.dictionaries(KEYS, STRUCTURES, max_size=8))
    text = emit_block(value, draw) if draw(st.booleans()) else emit_flow(value, draw) + "\n"
    if draw(st.integers(0, 3)) == 0:
        text = (
            "---\n"
            + text
            + draw(st.sampled_from(["---\n", "...\n", "--- !!python/object:x\n", "%YAML 1.1\n---\n"]))
            + text
        )
    return text


JUNK = st.sampled_from(
    ["\t", "  ", "\n", ": ", "- ", "? ", "{", "}", "[", "]", ",", "'", '"', "#", "&a ", "*a", "!", "!!", "%", "@", "`",
     "|", ">", "|-\n  x\n", "---\n", "...\n", "\\", "\\x00", '"\\ud800"', '"\\0"', "\x85", "\u2028", "\ufeff", "\r",
     "\x07", "<<: *a\n", "? [a]\n: b\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "!!python/object/new:os.system [id]"]
)  # fmt: skip


@st.composite
def raw_texts(draw: Any) -> str:
    parts = draw(st.lists(JUNK | st.sampled_from(RULE_WORDS) | st.text(max_size=10), max_size=25))
    return "".join(parts)


@st.composite
def deep_texts(draw: Any) -> str:
    depth = draw(st.integers(MAX_DEPTH + 1, 3000))
    kind = draw(st.sampled_from(["flow-list", "flow-map", "block-map", "block-list", "mixed"]))
    if kind == "flow-list":
        return "name: " + "[" * depth + "]" * depth + "\n"
    if kind == "flow-map":
        return "event: " + "{a: " * depth + "1" + "}" * depth + "\n"
    if kind == "block-map":
        depth = min(depth, 300)
        return "action:\n" + "".join("  " * i + "k:\n" for i in range(1, depth)) + "  " * depth + "v\n"
    if kind == "block-list":
        return "".join("  " * i + "-\n" for i in range(min(depth, 300))) + "x\n"
    return "scope: " + "[{a: " * (depth // 2) + "1" + "}]" * (depth // 2) + "\n"


# -- strategies: mutations of the example rules ----------------------------------------------
def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


def _get(value: Any, path: tuple) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def mutated_examples(draw: Any) -> str:
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    data = yaml.safe_load(EXAMPLES[name])
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(data)))
        operation = draw(
            st.sampled_from(["drop", "scalar", "structure", "unknown key", "retype", "real key"])
        )
        if not path:
            if isinstance(data, dict) and operation in ("unknown key", "real key"):
                data[draw(KEYS)] = draw(SCALARS)
            continue
        parent, last = _get(data, path[:-1]), path[-1]
        current = parent[last]
        if operation == "drop":
            del parent[last]
        elif operation == "scalar":
            parent[last] = draw(SCALARS)
        elif operation == "structure":
            parent[last] = draw(STRUCTURES)
        elif operation == "retype":
            parent[last] = (
                [current]
                if not isinstance(current, list)
                else {"k": current}
                if draw(st.booleans())
                else str(current)
            )
        elif isinstance(current, dict):
            key = draw(KEYS) if operation == "unknown key" else draw(st.sampled_from(RULE_WORDS))
            current[key] = draw(SCALARS)
        else:
            parent[last] = draw(st.sampled_from(RULE_WORDS))
    if draw(st.booleans()):
        return emit_block(data, draw)
    return emit_flow(data, draw) + "\n"


@st.composite
def edited_examples(draw: Any) -> str:
    """The example files' text, edited like a person might: a stray character, a tab, a line
    lost or doubled, two files pasted together."""
    text = EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))]
    for _ in range(draw(st.integers(1, 3))):
        lines = text.splitlines(keepends=True)
        at = draw(st.integers(0, max(0, len(lines) - 1)))
        edit = draw(st.sampled_from(["insert", "delete", "tab", "double", "swap", "paste", "cut"]))
        if edit == "insert":
            offset = draw(st.integers(0, len(text)))
            text = text[:offset] + draw(JUNK | st.text(max_size=5)) + text[offset:]
        elif edit == "delete" and lines:
            text = "".join(lines[:at] + lines[at + 1 :])
        elif edit == "tab" and lines:
            lines[at] = lines[at].replace("  ", "\t", 1)
            text = "".join(lines)
        elif edit == "double" and lines:
            text = "".join(lines[: at + 1] + lines[at:])
        elif edit == "swap" and len(lines) > at + 1:
            lines[at], lines[at + 1] = lines[at + 1], lines[at]
            text = "".join(lines)
        elif edit == "paste":
            text = (
                text
                + draw(st.sampled_from(["", "---\n"]))
                + EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))]
            )
        elif edit == "cut":
            start = draw(st.integers(0, len(text)))
            text = text[:start] + text[start + draw(st.integers(0, 40)) :]
    return text


# -- the tests ------------------------------------------------------------------------------
@SETTINGS
@given(yaml_texts())
def test_random_documents(text):
    check_text(text)


@SETTINGS
@given(raw_texts())
def test_random_text_with_yaml_syntax_junk(text):
    check_text(text)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deep_texts())
def test_deep_nesting(text):
    issues = check_text(text)
    assert issues and any("nested more than" in issue or "YAML syntax error" in issue for issue in issues)


@SETTINGS
@given(mutated_examples())
def test_mutated_example_rules(text):
    check_text(text)


@SETTINGS
@given(edited_examples())
def test_edited_example_files(text):
    check_text(text)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(edited_examples() | mutated_examples() | st.binary(max_size=200), min_size=1, max_size=4))
def test_load_rules_from_files(contents):
    """Through files: every issue names its own file; a file that is not UTF-8 is one issue
    with the line of its first bad byte; duplicate names across files name both places."""
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, content in enumerate(contents):
            path = Path(folder) / f"r{i}.yaml"
            # a lone surrogate (a split emoji) is written as such: the file is then not UTF-8
            path.write_bytes(
                content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
            )
            paths.append(path)
        try:
            loaded = load_rules([folder])
        except RuleValidationError as exc:
            by_file = {str(p): p.read_bytes() for p in paths}
            for issue in exc.issues:
                assert issue.file in by_file, str(issue)
                raw = by_file[issue.file]
                try:
                    text = raw.decode("utf-8-sig")
                except UnicodeDecodeError:
                    assert issue.message.startswith("not UTF-8 text") and issue.line is not None, str(issue)
                    assert (
                        issue.line
                        == raw.count(b"\n", 0, int(issue.message.split("byte ")[1].rstrip(")"))) + 1
                    )
                    continue
                check_issues([issue], text, issue.file)
                if issue.message.startswith("duplicate automation name"):
                    assert issue.field == "name" and re.search(r"\(also at .+:\d+\)$", issue.message)
            return
        for rule in loaded:
            check_storable(rule.automation)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_texts() | raw_texts() | mutated_examples() | edited_examples())
def test_everything_at_length(text):
    check_text(text)


# -- what the fuzzer found (kept as plain examples) --------------------------------------------
def test_deep_nesting_names_its_line_and_top_level_key():
    assert check_text("name: r\nscope:\n  project: " + "[" * 3000 + "]" * 3000 + "\n") == [
        f"{FILE}:3: scope: nested more than {MAX_DEPTH} levels deep"
    ]


def test_nesting_limit_is_exact():
    at_limit = "name: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n"
    assert (
        check_text(at_limit)[0]
        == f"{FILE}:1: name: must be text (quote it if YAML reads it as a number, date or boolean)"
    )
    beyond = "name: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n"
    assert check_text(beyond) == [f"{FILE}:1: name: nested more than {MAX_DEPTH} levels deep"]


def test_explicit_tags_on_text_that_does_not_fit_them():
    assert check_text("name: !!bool null\ndescription: !!int ''\ncooldown: !!float x\n") == [
        f"{FILE}:1: name: cannot read 'null' as !!bool",
        f"{FILE}:2: description: cannot read '' as !!int",
        f"{FILE}:3: cooldown: cannot read 'x' as !!float",
    ]


def test_an_empty_value_is_reported_at_its_key():
    assert check_text("? |-\n  x\n") == [
        f"{FILE}:1: name: field required",
        f"{FILE}:1: scope: field required",
        f"{FILE}:1: event: field required",
        f"{FILE}:1: action: field required",
        f"{FILE}:1: x: unknown key 'x'",
    ]
    text = EXAMPLES["europe-tag.yaml"].replace("  tag_regex: ^europe\n", "  tag_regex:\n")
    assert check_text(text) == [
        f"{FILE}:8: event.tag_regex: must be text (quote it if YAML reads it as a number, date or boolean)"
    ]


def test_a_key_named_like_pydantics_key_marker_is_still_named():
    assert check_text("'[key]': null\n")[-1] == f"{FILE}:1: [key]: unknown key '[key]'"


def test_a_huge_number_is_not_echoed_whole():
    text = EXAMPLES["accuracy-above-0.6.yaml"].replace("window: 5", "window: " + "9" * 5000)
    assert check_text(text) == [
        f"{FILE}:9: event.window: cannot read '{'9' * 50}…(5000 characters)' as !!int"
    ]


def test_an_integer_beyond_floats_is_worded():
    text = EXAMPLES["accuracy-above-0.6.yaml"].replace("threshold: 0.6", "threshold: 1" + "0" * 400)
    assert check_text(text) == [
        f"{FILE}:12: event.threshold: is too large for a number (at most about 1.8e308)"
    ]


def test_json_escaped_emoji_are_joined_and_a_lone_surrogate_is_refused():
    line = "description: Record versions tagged for a European region"
    text = EXAMPLES["europe-tag.yaml"].replace(line, 'description: "Record \\ud83d\\ude00 versions"')
    (rule,) = parse_rules_text(text, FILE)
    assert rule.automation.description == "Record \U0001f600 versions"
    check_storable(rule.automation)
    lone = EXAMPLES["europe-tag.yaml"].replace(line, 'description: "Record \\ud83d versions"')
    assert check_text(lone) == [
        f"{FILE}:3: description: \\ud83d is half of a UTF-16 surrogate pair, not a character"
    ]


def test_problems_inside_the_document_name_their_field():
    text = "name: r\nscope: {project: acme/vision}\nevent: {type: run_state, states: [failed]}\naction:\n  type: webhook\n  url: https://x.example\n  payload: {a: !!binary aGk=, b: *x, c: {1: 2}}\n"
    assert check_text(text) == [
        f"{FILE}:7: action.payload.a: unsupported YAML tag !!binary",
        f"{FILE}:7: action.payload.b: YAML aliases (*name) are not supported: write the value out",
        f"{FILE}:7: action.payload.c: key '1' is read as int: quote it",
    ]


def test_a_file_that_is_not_utf8_names_the_line_of_the_bad_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: r\ndescription: caf\xe9\n".encode("latin-1"))
    try:
        load_rules([path])
    except RuleValidationError as exc:
        assert [str(i) for i in exc.issues] == [f"{path}:2: not UTF-8 text (byte 24)"]
    else:
        raise AssertionError("a latin-1 file was loaded")


def test_a_surrogate_in_a_payload_built_in_python_is_refused_not_left_for_the_store():
    data = yaml.safe_load(EXAMPLES["production-alias.yaml"])
    data["action"]["payload"]["note"] = "half \udc00 a pair"
    try:
        Automation.model_validate(data)
    except ValueError as exc:
        assert "action.webhook.payload.note" in str(exc) and "no unpaired surrogates" in str(exc)
    else:
        raise AssertionError("a payload that cannot be stored as JSON was accepted")
