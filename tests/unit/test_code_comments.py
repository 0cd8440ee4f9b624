"""Comments and docstrings in engine/ explain themselves: a reader of the package has neither
the product spec nor the issue tracker, so neither is cited."""

from __future__ import annotations

import re
from pathlib import Path

import engine

PACKAGE = Path(engine.__file__).parent
CITATION = re.compile(r"\bSPEC\b|§|\b[Ii]ssues? #?\d+")
# Released migrations are never edited (`engine db migrate` checks their checksums), so an old
# citation in one stays.
FROZEN = set((PACKAGE / "sql" / "migrations").glob("*.sql"))


def test_no_spec_or_issue_citations():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted([*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.sql")])
        if path not in FROZEN
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if CITATION.search(line)
    ]
    assert found == []
