"""The least-privilege grants live in one file, engine/sql/grants.sql (the tests apply it); the copy
that docs/production.md shows must be that file, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_show_sql_grants_verbatim() -> None:
    docs = (ROOT / "docs" / "production.md").read_text()
    section = docs.split("\n## Least-privilege roles\n", 1)[1].split("\n## ", 1)[0]
    shown = re.findall(r"^```sql\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert (ROOT / "engine" / "sql" / "grants.sql").read_text() in shown
