"""The README's reference tables stay in sync with the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

from engine.cli.db import db_app
from engine.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.MULTILINE | re.DOTALL)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_every_setting_is_in_the_configuration_table() -> None:
    documented = set(re.findall(r"^\| `(ENGINE_[A-Z_]+)` \|", _section("Configuration"), re.MULTILINE))
    expected = {f"ENGINE_{name.upper()}" for name in Settings.model_fields} | {"ENGINE_SQL_DIR"}
    assert documented == expected


def test_every_db_command_is_in_the_db_table() -> None:
    documented = set(
        re.findall(r"^\| `engine db (\w+)` \|", _section("The embedded database: `engine db`"), re.MULTILINE)
    )
    assert documented == {c.name or c.callback.__name__ for c in db_app.registered_commands}


def test_exactly_two_setup_commands() -> None:
    block = re.search(r"```sh\n(.*?)```", _section("Set-up: two commands"), re.DOTALL).group(1)
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make demo", "make test"]
