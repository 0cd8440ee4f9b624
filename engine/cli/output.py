"""Rows on stdout, for people and for scripts: `--format table|json|tsv`.

Used by `engine rules list`, `engine history` and `engine deliveries`. A command gives its
rows as dicts with stable keys (the JSON keys and TSV header, in order) and, for the table,
a rich Table it builds from them.

- table (default): for a terminal, fitted to its width as rich does; piped or redirected,
  at the table's natural width (rich would squeeze it into 80 columns), so no cell is
  wrapped or cut.
- json: one JSON array of objects, every key present (null when empty); times in ISO 8601.
- tsv: a header line, then one line per row, fields separated by tabs. Backslash, tab,
  newline and carriage return inside a value are written `\\\\`, `\\t`, `\\n`, `\\r`
  (PostgreSQL's COPY text format); an empty value is an empty field, booleans are
  `true` / `false` (as in JSON).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table


class Format(StrEnum):
    table = "table"
    json = "json"
    tsv = "tsv"


FormatOption = Annotated[
    Format,
    typer.Option(
        "--format",
        case_sensitive=False,
        help="table (for people), json (an array of objects) or tsv (a header line, then one row per line; "
        "tabs, newlines and backslashes in values written \\t \\n \\\\) for scripts.",
    ),
]


def parse_when(text: str) -> datetime:
    """A `--since WHEN` value, or a usage error (not a traceback) when it cannot be read."""
    from engine.since import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def is_terminal() -> bool:
    """Whether stdout is a terminal (a person reads it): cells may then be shortened."""
    return Console().is_terminal


def cell(value: Any, width: int | None = None) -> str:
    """Free text as one table cell: markup escaped, whitespace runs (tabs, newlines) as one
    space; cut to `width` characters only for a terminal (piped, cells stay whole)."""
    text = " ".join(str("" if value is None else value).split())
    if width is not None and len(text) > width and is_terminal():
        text = text[: width - 1] + "…"
    return escape(text)


def print_table(table: Table) -> None:
    """Print a table: to a terminal at its width, elsewhere at the table's full width."""
    console = Console()
    if not console.is_terminal:
        wide = console.options.update_width(1_000_000)
        console.width = max(Measurement.get(console, wide, table).maximum, 1)
    console.print(table)


def print_rows(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], fmt: Format) -> None:
    """Write `rows` as JSON or TSV (the `keys` in this order); not for tables."""
    if fmt is Format.json:
        data = [{key: _json_value(row.get(key)) for key in keys} for row in rows]
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    elif fmt is Format.tsv:
        lines = ["\t".join(keys)]
        lines += ["\t".join(_tsv_value(row.get(key)) for key in keys) for row in rows]
        sys.stdout.write("\n".join(lines) + "\n")
    else:
        raise ValueError(f"print_rows does not print {fmt.value}: build a table and use print_table")
    sys.stdout.flush()


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")  # not JSON numbers
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (UUID, Decimal)):
        return str(value)
    return value


def _tsv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    value = _json_value(value)
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False)
        if isinstance(value, (list, dict))
        else str(value)
    )
    return text.translate(_TSV_ESCAPES)
