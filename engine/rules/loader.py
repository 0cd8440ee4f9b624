"""Read rule files: every problem of every file, each with its file, line and field.

    rules/x.yaml:12: event.window: must be ≥ 1

YAML is *composed* (not constructed) with PyYAML's safe loader, so every value keeps the
line it came from and no tag can build a Python object. Pydantic's error locations are
then walked down the composed nodes to find the line of the offending key or value.
Anything wrong with the input ends in one RuleValidationError listing all issues.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.exceptions import RuleIssue, RuleValidationError
from engine.rules.actions import ACTION_CLASSES
from engine.rules.automation import Automation
from engine.rules.events import EVENT_CLASSES, EVENT_TYPES

if TYPE_CHECKING:
    import psycopg

RULE_SUFFIXES = (".yaml", ".yml")
MAX_DEPTH = 64
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("null", "bool", "int", "float", "str")}
_KEEP_TEXT_TAGS = {_TAG + "timestamp"}  # a date is only ever a string in a rule


@dataclass(frozen=True)
class LoadedRule:
    """A validated rule and where it was written (`line` is the first line of its document)."""

    automation: Automation
    file: str
    line: int
    root: Node | None = field(default=None, repr=False, compare=False)  # the YAML document, for line_of

    def line_of(self, path: str) -> int:
        """The line of a field such as `event.operator` (of its parent when it is not written)."""
        if self.root is None:
            return self.line
        line, _ = locate(self.root, tuple(path.split(".")))
        return line or self.line


def load_rules(
    paths: Iterable[str | Path], conn: psycopg.Connection | None = None, texts: dict[str, str] | None = None
) -> list[LoadedRule]:
    """Load every rule of the given files and folders (`*.yaml`, `*.yml`, recursive, sorted).

    With a connection, regexes are also compiled by PostgreSQL. Raises RuleValidationError
    with every issue of every file. `texts`, if given, receives the text of each file read,
    by the name issues use (for a client that sends the files to a server as written).
    """
    loader = _Loader()
    texts = {} if texts is None else texts
    for display, path in loader.files(paths):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            loader.issue(display, None, "", f"rule file not found: {display}")
            continue
        except OSError as exc:
            loader.issue(display, None, "", f"cannot read rule file: {exc.strerror or exc}")
            continue
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            loader.issue(display, line, "", f"not UTF-8 text (byte {exc.start})")
            continue
        texts[display] = text
        loader.parse(text, display)
    return loader.finish(conn)


def parse_rules_text(
    text: str, file: str = "<string>", conn: psycopg.Connection | None = None
) -> list[LoadedRule]:
    """Load the rules of one YAML text (several separated by `---`); see load_rules.

    >>> parse_rules_text('''
    ... name: failed
    ... scope: {project: acme/vision}
    ... event: {type: run_state, states: [failed]}
    ... action: {type: no_op}
    ... ''')[0].automation.event.states
    ('failed',)
    """
    return parse_rules_texts([(text, file)], conn)


def parse_rules_texts(
    texts: Iterable[tuple[str, str]], conn: psycopg.Connection | None = None
) -> list[LoadedRule]:
    """Load the rules of several (text, file name) pairs together, as load_rules loads files
    (a name used twice is an error)."""
    loader = _Loader()
    for text, file in texts:
        loader.parse(text, file)
    return loader.finish(conn)


def _error_line(exc: yaml.YAMLError, text: str) -> int | None:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    position = getattr(exc, "position", None)  # ReaderError (a forbidden character) has only this
    if mark is not None:
        line = mark.line + 1
    elif isinstance(position, int):
        line = text.count("\n", 0, position) + 1
    else:
        return None
    # "found <stream end>" points past the final newline: name the last line instead.
    return max(1, min(line, len(text.splitlines())))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        character = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return f"character {character!r} is not allowed in YAML"
    return str(getattr(exc, "problem", None) or str(exc).splitlines()[0])


class _Loader:
    def __init__(self) -> None:
        self.issues: list[RuleIssue] = []
        self.loaded: list[tuple[LoadedRule, Node]] = []

    def issue(self, file: str, line: int | None, field: str, message: str) -> None:
        self.issues.append(RuleIssue(file, line, field, message))

    # -- files -------------------------------------------------------------------------
    def files(self, paths: Iterable[str | Path]) -> Iterator[tuple[str, Path]]:
        seen: set[Path] = set()
        for given in paths:
            path = Path(given)
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.suffix in RULE_SUFFIXES and p.is_file())
                if not found:
                    self.issue(str(given), None, "", f"no rule files (*.yaml, *.yml) in {given}")
                candidates = found
            else:
                candidates = [path]
            for candidate in candidates:
                key = candidate.resolve()
                if key not in seen:
                    seen.add(key)
                    yield str(candidate), candidate

    # -- one text ----------------------------------------------------------------------
    def parse(self, text: str, file: str) -> None:
        for node in self._documents(text, file):
            self._validate(node, file)

    def _documents(self, text: str, file: str) -> Iterator[Node]:
        loader: _Composer | None = None
        try:
            loader = _Composer(text)  # the reader already refuses forbidden characters here
            while loader.check_node():
                node = loader.get_node()
                if node is not None:
                    yield node
        except _TooDeep as exc:
            self.issue(file, exc.line, exc.field, f"nested more than {MAX_DEPTH} levels deep")
        except yaml.YAMLError as exc:
            # the parser cannot resynchronise after an error: the rest of the file is lost
            self.issue(file, _error_line(exc, text), "", f"YAML syntax error: {_yaml_problem(exc)}")
        except RecursionError:  # _Composer bounds the depth; this is only a last resort
            self.issue(file, None, "", "YAML nested too deeply")
        finally:
            if loader is not None:
                loader.dispose()

    def _validate(self, root: Node, file: str) -> None:
        line = root.start_mark.line + 1
        converter = _Converter()
        data = converter.value(root, ())
        if converter.problems:
            for node, path, message in converter.problems:
                self.issue(file, node.start_mark.line + 1, _field_path(path), message)
            return
        if data is None or data == "":
            return  # an empty document (a comment, or `---` at the end)
        if not isinstance(data, dict):
            self.issue(file, line, "", "a rule must be a mapping of keys (name:, scope:, event:, action:)")
            return
        try:
            automation = Automation.model_validate(data)
        except ValidationError as exc:
            # inputs are read by _explain only to word a message, never quoted (secrets)
            for error in exc.errors(include_url=False):
                loc, message = _explain(error)
                where, field = locate(root, loc)
                self.issue(file, where, field, message)
            return
        except Exception as exc:
            self.issue(file, line, "", f"cannot validate this rule ({type(exc).__name__}: {exc})")
            return
        self.loaded.append((LoadedRule(automation, file, line, root), root))

    # -- across files ------------------------------------------------------------------
    def finish(self, conn: psycopg.Connection | None) -> list[LoadedRule]:
        first: dict[str, tuple[str, int | None]] = {}
        for rule, root in self.loaded:
            name = rule.automation.name
            line, _ = locate(root, ("name",))
            if name in first:
                other_file, other_line = first[name]
                self.issue(
                    rule.file,
                    line,
                    "name",
                    f"duplicate automation name {name!r} (also at {other_file}:{other_line})",
                )
            else:
                first[name] = (rule.file, line)
        if conn is not None:
            # PostgreSQL is the judge of the regexes it runs; asking it is storage's business.
            from engine.automations import check_regexes_in_db

            for rule, root in self.loaded:
                for found in check_regexes_in_db(conn, rule.automation, file=rule.file):
                    line, _ = locate(root, tuple(found.field.split(".")))
                    self.issue(rule.file, line, found.field, found.message)
        if self.issues:
            raise RuleValidationError(self.issues)
        return [rule for rule, _ in self.loaded]


# -- YAML nodes to plain data ----------------------------------------------------------------
class _AliasNode(ScalarNode):
    """Stands where a YAML alias (`*name`) was written."""


class _TooDeep(yaml.YAMLError):
    """Nesting beyond MAX_DEPTH, found while composing (before Python's recursion limit)."""

    def __init__(self, line: int, field: str):
        super().__init__(f"line {line}: nested more than {MAX_DEPTH} levels deep")
        self.line, self.field = line, field


class _Composer(yaml.SafeLoader):
    """PyYAML's safe loader, composing only, with every alias replaced by an _AliasNode.

    A rule has no use for aliases, and not expanding them rules out "billion laughs"
    documents and cycles; the node keeps the alias's own line for the error. Composing is
    recursive, so nesting is bounded here, where the line of the too-deep node is known.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._path: list[Any] = []

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.get_event()
            return _AliasNode(_TAG + "null", "", event.start_mark, event.end_mark)
        if parent is not None:
            self._path.append(index.value if isinstance(index, ScalarNode) else index)
        try:
            if len(self._path) > MAX_DEPTH:
                # the field is the top-level key it happens under: the full path is 64 levels long
                raise _TooDeep(self.peek_event().start_mark.line + 1, _field_path(self._path[:1]))
            return super().compose_node(parent, index)
        finally:
            if parent is not None:
                self._path.pop()


class _Converter:
    """Composed YAML → dicts, lists and scalars, refusing what a rule file has no use for.

    Each problem keeps its node (for the line) and its path from the document's root
    (for the field): a key problem names the mapping holding the key.
    """

    def __init__(self) -> None:
        self.problems: list[tuple[Node, tuple[Any, ...], str]] = []
        self.constructor = SafeConstructor()

    def problem(self, node: Node, path: tuple[Any, ...], message: str) -> None:
        self.problems.append((node, path, message))

    def value(self, node: Node, path: tuple[Any, ...]) -> Any:
        if isinstance(node, _AliasNode):
            self.problem(node, path, "YAML aliases (*name) are not supported: write the value out")
            return None
        if len(path) > MAX_DEPTH:  # _Composer stops deeper documents; kept for other callers
            self.problem(node, path, f"nested more than {MAX_DEPTH} levels deep")
            return None
        if isinstance(node, MappingNode):
            return self.mapping(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != _TAG + "seq":
                self.unsupported(node, path)
                return None
            return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def mapping(self, node: MappingNode, path: tuple[Any, ...]) -> dict[str, Any] | None:
        if node.tag != _TAG + "map":
            self.unsupported(node, path)
            return None
        result: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                self.problem(key_node, path, "YAML merge keys (<<) are not supported")
                continue
            key = self.scalar(key_node, path) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                if isinstance(key_node, _AliasNode):
                    continue  # scalar() reported it
                if isinstance(key_node, ScalarNode):
                    message = f"key {_shorten(key_node.value)!r} is read as {type(key).__name__}: quote it"
                else:
                    message = "keys must be plain text, not a mapping or a list"
                self.problem(key_node, path, message)
                continue
            if not key.strip():
                self.problem(key_node, path, "a key must not be empty: write the key's name")
                continue
            if key in result:
                self.problem(key_node, path, f"duplicate key {_shorten(key)!r} (first at line {lines[key]})")
                continue
            lines[key] = key_node.start_mark.line + 1
            result[key] = self.value(value_node, (*path, key))
        return result

    def scalar(self, node: Node, path: tuple[Any, ...]) -> Any:
        if isinstance(node, _AliasNode):
            return self.value(node, path)
        if not isinstance(node, ScalarNode):
            self.unsupported(node, path)
            return None
        if node.tag in _KEEP_TEXT_TAGS:
            return self.text(node, path, node.value)
        if node.tag not in _SCALAR_TAGS:
            self.unsupported(node, path)
            return None
        try:
            value = self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError, LookupError):
            # PyYAML's constructors trust the resolver's regexes: an explicit tag on text that
            # does not fit raises ValueError (`!!int x`, also an int of more digits than
            # Python converts), IndexError (`!!int ""`) or KeyError (`!!bool null`).
            self.problem(node, path, f"cannot read {_shorten(node.value)!r} as {_short_tag(node.tag)}")
            return None
        return self.text(node, path, value) if isinstance(value, str) else value

    def text(self, node: Node, path: tuple[Any, ...], value: str) -> str | None:
        # YAML's "\u" escapes are UTF-16 code units, as in JSON: a copied "\ud83d\ude00" is
        # one emoji, joined here. Half a pair alone is no character: no UTF-8 text (hence no
        # JSON, no database row) can hold it, so such a rule could load but never be stored.
        if not any("\ud800" <= ch <= "\udfff" for ch in value):
            return value
        units = value.encode("utf-16-le", "surrogatepass")
        try:
            return units.decode("utf-16-le")
        except UnicodeDecodeError as exc:
            bad = int.from_bytes(units[exc.start : exc.start + 2], "little")
            self.problem(node, path, f"\\u{bad:04x} is half of a UTF-16 surrogate pair, not a character")
            return None

    def unsupported(self, node: Node, path: tuple[Any, ...]) -> None:
        self.problem(node, path, f"unsupported YAML tag {_shorten(_short_tag(node.tag))}")


def _field_path(path: Iterable[Any]) -> str:
    """("action", "headers", "X") → "action.headers.X"; list positions as [i]."""
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


def _shorten(text: str, limit: int = 60) -> str:
    """A value quoted in a message: enough to find it, never the whole of a huge one."""
    return text if len(text) <= limit else f"{text[: limit - 10]}…({len(text)} characters)"


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


# -- pydantic errors to lines and words -------------------------------------------------------
def locate(root: Node, loc: tuple[Any, ...]) -> tuple[int | None, str]:
    """The YAML line of a pydantic error location, and the field path in words.

    Keys present → the key's line (a value that is a scalar → its own line); a missing key
    → the line of the mapping that lacks it. Tags of discriminated unions (`event.<type>`)
    are skipped; `[key]` (an invalid mapping key) points at the key.
    """
    node: Node = root
    key_node: Node | None = None
    parts: list[str] = []
    for element in loc:
        if element == "[key]" and not _has_key(node, "[key]"):  # pydantic's marker, not a key so named
            if key_node is not None:
                node = key_node
            continue
        if isinstance(node, MappingNode):
            pair = next(
                ((k, v) for k, v in node.value if isinstance(k, ScalarNode) and k.value == str(element)),
                None,
            )
            if pair is not None:
                key_node, node = pair
                parts.append(str(element))
                continue
            if _type_of(node) == element:  # the tag pydantic adds for a discriminated union
                continue
            parts.append(str(element))
            break
        if isinstance(node, SequenceNode) and isinstance(element, int) and 0 <= element < len(node.value):
            parts.append(f"[{element}]")
            node, key_node = node.value[element], None
            continue
        if isinstance(element, int):
            parts.append(f"[{element}]")
        break
    # An empty value (`key:` and nothing) has no text of its own: PyYAML marks it where the
    # next token starts, often the next line or past the end. Its key's line is the place.
    empty = isinstance(node, ScalarNode) and node.value == "" and node.style is None
    if (isinstance(node, ScalarNode) and not (empty and key_node is not None)) or key_node is None:
        line = node.start_mark.line + 1
    else:
        line = key_node.start_mark.line + 1
    return line, ".".join(parts).replace(".[", "[")


def _has_key(node: Node, key: str) -> bool:
    return isinstance(node, MappingNode) and any(
        isinstance(k, ScalarNode) and k.value == key for k, _ in node.value
    )


def _type_of(node: MappingNode) -> str | None:
    for k, v in node.value:
        if isinstance(k, ScalarNode) and k.value == "type" and isinstance(v, ScalarNode):
            return v.value
    return None


def _known_keys(models: Iterable[type[BaseModel]]) -> frozenset[str]:
    keys: set[str] = set()
    todo = list(models)
    while todo:
        model = todo.pop()
        for name, info in model.model_fields.items():
            keys.add(name)
            for arg in getattr(info.annotation, "__args__", ()) or ():
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    todo.append(arg)
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                todo.append(info.annotation)
    return frozenset(keys)


# Every key a rule may contain: "did you mean" suggestions for unknown keys.
KNOWN_KEYS = _known_keys([Automation, *EVENT_CLASSES, *ACTION_CLASSES])
_EXPECTED_TYPES = {
    "event": EVENT_TYPES,
    "action": tuple(get_args(cls.model_fields["type"].annotation)[0] for cls in ACTION_CLASSES),
}


def _explain(error: ErrorDetails) -> tuple[tuple[Any, ...], str]:
    """(location, message in plain words) for one pydantic error."""
    kind, loc, ctx = error["type"], tuple(error["loc"]), error.get("ctx") or {}
    if kind == "rule":
        return loc, ctx["message"]
    if kind == "missing":
        return loc, "field required"
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
        return loc, f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "union_tag_not_found":
        expected = _EXPECTED_TYPES.get(str(loc[-1]) if loc else "", ())
        return (*loc, "type"), "field required" + (f": one of {', '.join(expected)}" if expected else "")
    if kind == "union_tag_invalid":
        return (
            *loc,
            "type",
        ), f"unknown type {_shorten(str(ctx.get('tag')))!r}: must be one of {ctx.get('expected_tags')}"
    if kind == "literal_error":
        return loc, f"must be {ctx.get('expected')}"
    bounds = {
        "greater_than_equal": "≥ {ge}",
        "greater_than": "> {gt}",
        "less_than_equal": "≤ {le}",
        "less_than": "< {lt}",
    }
    if kind in bounds:
        shown = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
        return loc, "must be " + bounds[kind].format(**shown)
    if kind in ("string_too_short", "too_short"):
        minimum = ctx.get("min_length", 1)
        return loc, "must not be empty" if minimum == 1 else f"must have at least {minimum} characters"
    if kind in ("string_too_long", "too_long"):
        return loc, f"is too long (at most {ctx.get('max_length')})"
    if (
        kind == "float_type"
        and isinstance(error.get("input"), int)
        and not isinstance(error.get("input"), bool)
    ):
        return loc, "is too large for a number (at most about 1.8e308)"
    plain = {
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "string_type": "must be text (quote it if YAML reads it as a number, date or boolean)",
        "string_unicode": "must be valid Unicode text (no unpaired surrogates)",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "list_type": "must be a list",
        "tuple_type": "must be a list",
        "dict_type": "must be a mapping (key: value)",
        "model_type": "must be a mapping (key: value)",
        "model_attributes_type": "must be a mapping (key: value)",
    }
    if kind in plain:
        return loc, plain[kind]
    message = str(error.get("msg", kind))
    return loc, message.removeprefix("Value error, ")
