"""`--format json|tsv` (engine/cli/output.py): every key, every value, one line per row."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from engine.cli.output import Format, print_rows

KEYS = ("id", "name", "when", "value", "ok", "missing")
ROW = {
    "id": uuid.UUID(int=7),
    "name": "tab\there\nnewline \\ backslash\r",
    "when": datetime(2026, 12, 2, 9, 30, tzinfo=UTC),
    "value": 0.1,
    "ok": True,
    "not asked": "left out",
}


def test_json_is_an_array_of_objects_with_every_key(capsys):
    print_rows([ROW, {"value": float("nan")}], KEYS, Format.json)
    data = json.loads(capsys.readouterr().out)
    assert [list(item) for item in data] == [list(KEYS), list(KEYS)]
    assert data[0] == {
        "id": "00000000-0000-0000-0000-000000000007",
        "name": "tab\there\nnewline \\ backslash\r",
        "when": "2026-12-02T09:30:00+00:00",
        "value": 0.1,
        "ok": True,
        "missing": None,
    }
    assert data[1]["value"] == "NaN" and data[1]["name"] is None


def test_json_of_nothing_is_an_empty_array(capsys):
    print_rows([], KEYS, Format.json)
    assert json.loads(capsys.readouterr().out) == []


def test_tsv_is_a_header_then_one_escaped_line_per_row(capsys):
    print_rows([ROW, {}], KEYS, Format.tsv)
    lines = capsys.readouterr().out.split("\n")
    assert lines == [
        "id\tname\twhen\tvalue\tok\tmissing",
        "00000000-0000-0000-0000-000000000007\ttab\\there\\nnewline \\\\ backslash\\r\t2026-12-02T09:30:00+00:00\t0.1\ttrue\t",
        "\t\t\t\t\t",
        "",
    ]


def unescape(field: str) -> str:
    """What a reader of the TSV does (PostgreSQL's COPY text format)."""
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[m.group(1)], field)


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_tsv_fields_come_back_whole(values):
    import contextlib
    import io

    keys = tuple(f"k{i}" for i in range(len(values)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_rows([dict(zip(keys, values))], keys, Format.tsv)
    header, row, end = out.getvalue().split("\n")
    assert end == "" and header.split("\t") == list(keys)
    assert [unescape(field) for field in row.split("\t")] == values
