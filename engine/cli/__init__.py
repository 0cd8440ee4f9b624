"""`engine` command line. Each command group lives in its own module with a `register(app)`."""

from __future__ import annotations

import sys

import typer

from engine import db as enginedb
from engine.exceptions import EngineError
from engine.logs import configure_logging

app = typer.Typer(
    name="engine",
    help=(
        "Automation engine for ML experiment tracking on TimescaleDB: runs logged with the Python SDK, "
        "YAML rules that watch them, webhooks and Slack messages when a rule fires.\n\n"
        "Start with `engine demo`. Every command uses ENGINE_DATABASE_URL, or the embedded database "
        "under ENGINE_DATA_DIR (default ./.engine) when it is unset; with ENGINE_URL and ENGINE_API_KEY "
        "set, `rules`, `history`, `deliveries`, `redeliver` and `explain` go through `engine web` instead. "
        "Each command has --help."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Keep in sync with the modules in engine/cli/.
from engine.cli import actions as _actions  # noqa: E402
from engine.cli import db as _db  # noqa: E402
from engine.cli import demo as _demo  # noqa: E402
from engine.cli import doctor as _doctor  # noqa: E402
from engine.cli import explain as _explain  # noqa: E402
from engine.cli import keys as _keys  # noqa: E402
from engine.cli import rules as _rules  # noqa: E402
from engine.cli import service as _service  # noqa: E402
from engine.cli import silence as _silence  # noqa: E402
from engine.cli import web as _web  # noqa: E402

for _module in (_db, _actions, _demo, _doctor, _explain, _keys, _rules, _service, _silence, _web):
    _module.register(app)


def main() -> None:
    configure_logging()  # text, or one JSON object per line with ENGINE_LOG_FORMAT=json
    enginedb.set_application_name("engine-cli")
    try:
        app()
    except EngineError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
