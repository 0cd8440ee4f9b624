"""`engine --help` and every subcommand's help are complete, and shell completion works."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from engine.cli import app

ENGINE = Path(sys.executable).parent / "engine"


def _commands(command: Any, path: tuple[str, ...] = ("engine",)) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _commands(sub, (*path, name))


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([str(ENGINE), *args], env=full, capture_output=True, text=True, timeout=60)


def test_every_command_and_parameter_has_help() -> None:
    commands = list(_commands(typer.main.get_command(app)))
    missing = []
    for path, command in commands:
        if not (command.help or "").strip():
            missing.append(" ".join(path))
        for param in command.params:
            if param.name != "help" and not (getattr(param, "help", None) or "").strip():
                missing.append(f"{' '.join(path)} {param.name}")
    assert missing == []
    # SPEC section 4: the public commands
    names = {" ".join(path[1:]) for path, _ in commands}
    assert {
        "db up",
        "db down",
        "db status",
        "db url",
        "db migrate",
        "rules validate",
        "rules compile",
        "rules apply",
        "rules list",
        "rules show",
        "rules enable",
        "rules disable",
        "rules delete",
        "rules test",
        "serve",
        "history",
        "deliveries",
        "redeliver",
        "actions test",
        "explain",
        "demo",
    } <= names


def test_help_of_every_command_runs() -> None:
    top = _run("--help")  # once as a user runs it, the others in-process (each start costs seconds)
    assert top.returncode == 0 and "engine demo" in top.stdout
    runner = CliRunner()
    for path, command in _commands(typer.main.get_command(app)):
        done = runner.invoke(app, [*path[1:], "--help"], env={"COLUMNS": "200"})
        assert done.exit_code == 0, (path, done.output)
        assert "Usage: engine" in done.output
        assert (command.help or "").strip().split("\n")[0][:40] in " ".join(done.output.split())


def test_shell_completion() -> None:
    # Typer finds the shell by walking up the process tree (shellingham) unless told not to;
    # under `make test` started without a shell above it (some CI runners), that finds none
    # and `bash` would be taken for an argument: ask for bash explicitly.
    script = _run("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0
    assert "complete" in script.stdout and "_ENGINE_COMPLETE=complete_bash" in script.stdout
    # what bash asks the script for when the user presses TAB after `engine ru` and `engine rules ap`
    words = _run(env={"_ENGINE_COMPLETE": "complete_bash", "COMP_WORDS": "engine ru", "COMP_CWORD": "1"})
    assert words.stdout.split() == ["rules"]
    words = _run(
        env={"_ENGINE_COMPLETE": "complete_bash", "COMP_WORDS": "engine rules ap", "COMP_CWORD": "2"}
    )
    assert words.stdout.split() == ["apply"]
    words = _run(
        env={"_ENGINE_COMPLETE": "complete_bash", "COMP_WORDS": "engine history --", "COMP_CWORD": "2"}
    )
    assert {"--automation", "--since", "--limit"} <= set(words.stdout.split())
