"""Every README command that can run here is run here, in order, as a newcomer would type it.

Fenced blocks are marked in their info string:

    ```bash runnable                     shell commands, run as they are
    ```python runnable file=train.py     a file the tour saves (then runs from a bash block)
    ```python runnable                   a Python snippet, run with the virtual environment's python
    ```sql runnable                      SQL, run with psql against the tour's database
    ```yaml rule                         a complete rule, validated by the rule loader

All runnable blocks of README.md become one bash script (so that `engine serve &` started in
one block is stopped by a later one), run in an empty folder against a fresh database
(ENGINE_DATABASE_URL). One substitution: the tour's receiver port 8765 becomes a free port,
so that an `engine demo` running at the same time (it uses 8765 too) cannot collide with it.

Not run, because they cannot run here: `make demo` / `make test` (they are the suite; the demo
has its own test), `source .venv/bin/activate` (the test puts .venv/bin first on PATH), docker
compose (no Docker engine) and the systemd unit (no systemd).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from engine.rules import parse_rules_text

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
# Only fences at the start of a line: indented blocks (inside list items) are never runnable.
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
EOF_MARK = "README_BLOCK_EOF"


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    flags: frozenset[str]
    file: str | None
    body: str

    @property
    def runnable(self) -> bool:
        return "runnable" in self.flags


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        words = match.group("info").split()
        lang = words[0] if words else ""
        attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        flags = frozenset(w for w in words[1:] if "=" not in w)
        found.append(
            Block(text.count("\n", 0, match.start()) + 1, lang, flags, attrs.get("file"), match.group("body"))
        )
    return found


def script_of(runnable: list[Block], port: int) -> str:
    lines = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for block in runnable:
        body = block.body.replace("127.0.0.1:8765", f"127.0.0.1:{port}").replace(
            '"127.0.0.1", 8765', f'"127.0.0.1", {port}'
        )
        assert EOF_MARK not in body
        lines.append(f"echo '### README.md:{block.line} ({block.lang})'")
        if block.file:
            lines += [
                f'mkdir -p "$(dirname {block.file})"',
                f"cat > {block.file} <<'{EOF_MARK}'",
                body + EOF_MARK,
            ]
        elif block.lang in ("bash", "sh"):
            lines.append(body)
        elif block.lang == "python":
            lines += [f"python - <<'{EOF_MARK}'", body + EOF_MARK]
        elif block.lang == "sql":
            lines += [f"psql \"$(engine db url)\" -X -q -v ON_ERROR_STOP=1 <<'{EOF_MARK}'", body + EOF_MARK]
        else:
            pytest.fail(f"README.md:{block.line}: no way to run a runnable {block.lang!r} block")
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_blocks_are_marked_as_the_test_expects() -> None:
    found = blocks(README)
    runnable = [b for b in found if b.runnable]
    kinds = {(b.lang, b.file is not None) for b in runnable}
    # the tour (bash, files), the SDK example (python), the SQL recipes (sql)
    assert {("bash", False), ("yaml", True), ("python", True), ("python", False), ("sql", False)} <= kinds
    assert len(runnable) >= 10
    # the signature check shown in "Verifying the signature" is the one the tour's receiver runs
    snippet = next(
        b for b in found if b.lang == "python" and "def is_from_engine" in b.body and not b.runnable
    )
    receiver = next(b for b in runnable if b.file == "receiver.py")
    assert snippet.body.split("\n\n", 1)[1].strip() in receiver.body
    # the two set-up commands stay the only ```sh block of their section and are not runnable
    assert not any(b.runnable and "make " in b.body for b in found)


@pytest.mark.slow
def test_readme_tour_runs_as_written(database_url: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    runnable = [b for b in blocks(README) if b.runnable]
    script = tmp_path / "readme.sh"
    script.write_text(script_of(runnable, _free_port()))
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "ENGINE_DATABASE_URL": database_url,
        "COLUMNS": "160",
    }
    env.pop("ENGINE_WEBHOOK_ALLOW_HOSTS", None)  # the tour sets what it needs
    done = subprocess.run(
        ["bash", str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
    assert "Traceback" not in done.stderr

    out = done.stdout
    assert "ok: 1 rule in 1 file" in out
    assert re.search(r"^created\s+good-accuracy$", out, re.MULTILINE)
    received = (work / "receiver.log").read_text()
    assert "signature ok /hooks/train" in received and '"run":"resnet-50"' in received
    assert "signature BAD" not in received
    png = (work / "why.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    fired = conn.execute(
        "SELECT run_name, metric, value, delivery_status FROM automation_history WHERE automation = 'good-accuracy'"
    ).fetchall()
    # the tour's run fires once (cooldown 24h); the SDK example's run climbs past 0.6 too, later,
    # after the tour stopped the service: it stays unevaluated, as it should
    assert [(r[0], r[1], r[3]) for r in fired] == [("resnet-50", "accuracy", "succeeded")] and fired[0][
        2
    ] > 0.6
    # the SDK example ran: its dataset version holds `production` and is linked into `model`
    holder = conn.execute(
        "SELECT c.name, v.version_index FROM artifact_aliases a JOIN artifact_versions v ON v.id = a.version_id"
        " JOIN artifact_collections c ON c.id = a.collection_id WHERE a.alias = 'production'"
    ).fetchall()
    assert holder == [("mnist", 0)]
    assert conn.execute("SELECT count(*) FROM registry_links").fetchone()[0] == 1


def test_sql_blocks_of_the_docs_run(database_url: str, tmp_path: Path) -> None:
    """The runnable SQL of docs/*.md (monitoring and retention queries) is valid on a fresh database."""
    runnable = [b for path in sorted((ROOT / "docs").glob("*.md")) for b in blocks(path) if b.runnable]
    assert runnable, "docs/production.md marks its SQL as runnable"
    assert {b.lang for b in runnable} == {"sql"}
    for block in runnable:
        done = subprocess.run(
            ["psql", database_url, "-X", "-q", "-v", "ON_ERROR_STOP=1"],
            input=block.body,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (block.line, done.stderr)


@pytest.mark.parametrize("path", [README, ROOT / "docs" / "rules.md"], ids=lambda p: p.name)
def test_rule_examples_are_valid_rules(path: Path) -> None:
    examples = [b for b in blocks(path) if b.lang == "yaml" and ("rule" in b.flags or b.file)]
    assert examples
    for block in examples:
        loaded = parse_rules_text(block.body, file=f"{path.name}:{block.line}")
        assert len(loaded) == 1


def test_readme_lists_every_template_variable() -> None:
    from engine.rules.variables import VARIABLES

    section = README.read_text().split("\n## Actions\n", 1)[1].split("\n## ", 1)[0]
    listed = set(
        re.findall(r"`([A-Za-z_]+)`", section.split("The variables:", 1)[1].split("A variable that", 1)[0])
    )
    assert set(VARIABLES) <= listed
