"""The named queries of engine/sql/queries/*.sql: each defined once, each used by the engine,
and every name the code asks for defined. Uses are read from the Python source (its syntax
tree): `query("name")`, or the name as a string the code passes on (a name chosen at run time,
`query(advance)`, or a helper that takes the query's name)."""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import engine
from engine import db as enginedb

ROOT = Path(__file__).resolve().parents[2]
ENGINE_SOURCE = Path(engine.__file__).resolve().parent


def _trees(*folders: Path) -> Iterator[tuple[Path, ast.AST]]:
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _query_calls(tree: ast.AST) -> Iterator[str]:
    """The literal names of `query("x")` and `db.query("x")` calls."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else None
            )
            if name == "query" and isinstance(node.args[0].value, str):
                yield node.args[0].value


GATEWAY_CALLS = {"rows", "one", "value", "run"}  # engine.db's helpers and Database's methods


def _gateway_calls(tree: ast.AST) -> Iterator[str]:
    """The literal query names given to the gateway: `rows(conn, "x")`, `database.one("x")`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else None
            )
            if name in GATEWAY_CALLS:
                for arg in node.args[:2]:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        yield arg.value
                        break


def test_every_named_query_is_defined_once() -> None:
    defined = Counter(
        name
        for path in (enginedb.SQL_DIR / "queries").glob("*.sql")
        for name in enginedb._BLOCK.findall(path.read_text())
    )
    assert [name for name, count in defined.items() if count > 1] == []
    assert set(defined) == enginedb.query_names() and len(defined) > 50


def test_the_loader_refuses_a_name_defined_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "queries").mkdir()
    (tmp_path / "queries" / "a.sql").write_text("-- name: same\nSELECT 1;\n")
    (tmp_path / "queries" / "b.sql").write_text("-- name: other\nSELECT 2;\n\n-- name: same\nSELECT 3;\n")
    monkeypatch.setattr(enginedb, "SQL_DIR", tmp_path)
    enginedb._queries.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"query 'same' defined twice \(a\.sql and b\.sql\)"):
            enginedb.query_names()
    finally:
        enginedb._queries.cache_clear()


def test_every_named_query_is_used_and_every_used_name_exists() -> None:
    defined = enginedb.query_names()
    called: set[str] = set()
    strings: set[str] = set()
    for _, tree in _trees(ENGINE_SOURCE):
        called |= set(_query_calls(tree))
        strings |= {
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
    assert len(called) > 50  # the walk found the engine's calls
    unused = sorted(defined - called - strings)
    assert unused == [], f"named queries nothing in engine/ uses (delete them): {unused}"

    for path, tree in _trees(ENGINE_SOURCE, ROOT / "bench", ROOT / "tests"):
        missing = sorted(set(_query_calls(tree)) - defined)
        assert missing == [], f"{path.relative_to(ROOT)} asks for queries that no file defines: {missing}"
    for path, tree in _trees(ENGINE_SOURCE):
        missing = sorted(set(_gateway_calls(tree)) - defined)
        assert missing == [], f"{path.relative_to(ROOT)} runs queries that no file defines: {missing}"


def test_the_history_and_its_newer_pages_filter_alike() -> None:
    """`history_newer` reads the other way along the same rows: its filters are `history`'s."""

    def filters(name: str) -> str:
        text = enginedb.query(name)
        found = text.split("-- filters:")[1].split("-- end of the filters")[0]
        return "\n".join(line.strip() for line in found.splitlines())

    assert "h.automation_id = ANY(%(automation_ids)s)" in filters("history")
    assert filters("history_newer") == filters("history")
