"""`engine deliveries`, `engine redeliver ID`, `engine actions test NAME`.

Nothing printed here can hold a secret: deliveries store `{env: NAME}` references only,
errors and response bodies are scrubbed before they are stored, and `actions test` prints
the scrubbed request record (headers carrying secrets show as [redacted]).
"""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine import db as enginedb
from engine.actions import flow, outbox
from engine.actions.context import sample_context
from engine.actions.dispatcher import POLL_SECONDS, Dispatcher
from engine.actions.http import Attempt
from engine.actions.send import send_action
from engine.cli.backend import open_backend, refuse_remote
from engine.cli.output import Format, FormatOption, cell, is_terminal, print_rows, print_table
from engine.exceptions import NotFound
from engine.rules.automation import Automation
from engine.settings import get_settings

console = Console()


def say(text: str) -> None:
    """Print a message unwrapped: ids and URLs in it are copied from."""
    console.print(text, soft_wrap=True)


actions_app = typer.Typer(help="Try an automation's actions.", no_args_is_help=True)
STATUSES = ("pending", "sending", "succeeded", "failed", "skipped", "suppressed", "silenced")
# The keys of `engine deliveries --format json|tsv` (the columns of the delivery_list query).
DELIVERY_KEYS = (
    "id",
    "trigger_id",
    "automation",
    "action_type",
    "status",
    "attempts",
    "max_attempts",
    "last_http_status",
    "last_error",
    "next_attempt_at",
    "created_at",
    "updated_at",
    "finished_at",
    "digest_count",
)
_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "pending": "yellow",
    "sending": "yellow",
    "skipped": "dim",
    "suppressed": "magenta",
    "silenced": "dim",
}


def _short(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def deliveries(
    status: Annotated[
        str | None,
        typer.Option(
            help=f"Only deliveries in this state ({', '.join(STATUSES)}); pending includes sending."
        ),
    ] = None,
    automation: Annotated[str | None, typer.Option(help="Only this automation's deliveries.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows, newest first.")] = 50,
    fmt: FormatOption = Format.table,
) -> None:
    """List deliveries (one per action of each trigger), newest first."""
    if status is not None and status not in STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(STATUSES)}", param_hint="--status")
    with open_backend() as backend:
        rows = backend.deliveries(status, automation, limit)
    if fmt is not Format.table:
        print_rows(rows, DELIVERY_KEYS, fmt)
        return
    table = Table(title=f"{len(rows)} deliveries" + (f" ({status})" if status else ""))
    # Short columns never wrap (ids are copied from here); the long ones fold. Ids and
    # errors are shortened for a terminal only (cell()): piped, every cell is whole.
    terminal = is_terminal()
    for column in (
        "id",
        "trigger",
        "automation",
        "action",
        "status",
        "attempts",
        "http",
        "last error",
        "updated",
    ):
        short = column not in ("automation", "last error", "updated")
        table.add_column(
            column,
            no_wrap=short,
            overflow="ellipsis" if short else "fold",
            min_width=8 if column == "id" else None,
        )
    for r in rows:
        table.add_row(
            str(r["id"])[:8] if terminal else str(r["id"]),
            str(r["trigger_id"]),
            cell(r["automation"]),
            r["action_type"] + (f" (digest of {r['digest_count']})" if r["digest_count"] else ""),
            f"[{_STYLE.get(r['status'], '')}]{r['status']}[/]",
            f"{r['attempts']}/{r['max_attempts']}",
            str(r["last_http_status"] or ""),
            cell(r["last_error"], 60),
            r["updated_at"].strftime("%Y-%m-%d %H:%M:%S"),
        )
    print_table(table)
    if rows:
        console.print("[dim]Ids may be abbreviated (at least 4 characters): engine redeliver ID[/]")


def redeliver(
    delivery_id: Annotated[
        str, typer.Argument(help="Delivery id, or a unique prefix of it (see `engine deliveries`).")
    ],
    here: Annotated[
        bool,
        typer.Option(
            "--here",
            help="Send it from this shell now and print the outcome (needs the action's secrets and "
            "ENGINE_WEBHOOK_ALLOW_HOSTS here), instead of leaving it to `engine serve`.",
        ),
    ] = False,
) -> None:
    """Send a delivery again (same id, fresh attempt budget), e.g. after fixing the receiver.

    By default it is queued, due now, for `engine serve`, which has the secrets and the
    address allow-list; `--here` sends it from this shell instead.
    """
    settings = get_settings()
    if here and settings.url:
        # sending needs the database (to claim it) and the action's secrets on this machine
        raise refuse_remote("`engine redeliver --here`")
    if not here:
        with open_backend() as backend:
            row = backend.redeliver(delivery_id)
        say(
            f"delivery {row['id']} ({escape(row['automation'])}, {row['action_type']}) queued: a running "
            f"`engine serve` sends it within about {POLL_SECONDS:g} s, with its own secrets and "
            "ENGINE_WEBHOOK_ALLOW_HOSTS (`engine deliveries` shows the outcome; `--here` sends it from this "
            "shell instead)"
        )
        return
    url = enginedb.database_url(settings)
    with enginedb.connection(url) as conn:
        row = outbox.redeliver(conn, delivery_id)
        what = f"delivery {row['id']} ({escape(row['automation'])}, {row['action_type']})"
        say(f"{what} is pending again; sending it from this shell")
        with Dispatcher(url, settings) as dispatcher:
            claimed = dispatcher.run_once(limit=1, only=row["id"])
        if not claimed:
            say("it is being sent by a running `engine serve`")
            return
        after = outbox.find(conn, str(row["id"]))
    style = _STYLE.get(after["status"], "")
    line = f"[{style}]{after['status']}[/]" + (
        f" (HTTP {after['last_http_status']})" if after["last_http_status"] else ""
    )
    if after["status"] == "pending":
        line += f", next attempt at {after['next_attempt_at']:%H:%M:%S}"
    say(line + (f": {escape(after['last_error'])}" if after["last_error"] else ""))
    if after["status"] == "failed":
        raise typer.Exit(1)


@actions_app.command("test")
def test(
    name: Annotated[str, typer.Argument(help="Automation name.")],
    action: Annotated[
        int | None, typer.Option(min=0, help="Only the action at this position (0-based).")
    ] = None,
) -> None:
    """Send the automation's actions once, now, for a sample event; print the responses.

    Uses the same code as real deliveries (templates, secrets, signature, address check).
    Writes nothing to the database.
    """
    settings = get_settings()
    with enginedb.connection() as conn:
        found = enginedb.one(conn, "delivery_automation_rule", {"name": name})
    if found is None:
        raise NotFound(f"no automation named {name!r} (see `engine rules list`)")
    automation = Automation.model_validate(found["rule"])
    actions = [automation.action]
    ctx = sample_context(automation, settings)
    chosen = (
        list(enumerate(actions))
        if action is None
        else [(action, actions[action])]
        if action < len(actions)
        else []
    )
    if not chosen:
        raise typer.BadParameter(f"the automation has {len(actions)} action(s)", param_hint="--action")
    failed = False
    for index, spec in chosen:
        if spec.type == "no_op":
            say(f"action {index} (no_op): nothing to send")
            continue
        if spec.type == "stop_run":
            say(
                f"action {index} (stop_run): would ask the run to stop (its next run.log or run.flush raises "
                "engine.RunStopped and it ends killed); a test stops nothing"
            )
            continue
        delivery_id = str(uuid.uuid4())
        # a digest's delivery carries its triggers: here, the sample one
        sample = flow.sample_digest(ctx) if spec.digest is not None else ctx
        attempt = send_action(delivery_id, spec, sample, settings)
        failed |= not attempt.succeeded
        _print_attempt(index, spec.type, delivery_id, attempt)
    if failed:
        raise typer.Exit(1)


def _print_attempt(index: int, action_type: str, delivery_id: str, attempt: Attempt) -> None:
    request = attempt.request
    say(f"[bold]action {index} ({action_type})[/] → {escape(str(request.get('url') or ''))}")
    say(f"  X-Automation-Delivery: {delivery_id} (test)")
    for key in ("channel", "from", "to", "cc", "subject"):  # Slack and e-mail: where it went
        if request.get(key):
            value = request[key]
            say(f"  {key}: {escape(', '.join(value) if isinstance(value, list) else str(value))}")
    for header, value in (request.get("headers") or {}).items():
        say(f"  {escape(header)}: {escape(str(value))}")
    if attempt.http_status is not None:
        style = "green" if attempt.succeeded else "red"
        say(f"  [{style}]HTTP {attempt.http_status}[/] in {attempt.duration_ms or 0:.0f} ms")
    if attempt.response_body:
        say("  response: " + escape(_short(attempt.response_body, 2000)))
    if attempt.error:
        say(
            f"  [red]error:[/] {escape(attempt.error)}" + (" (would be retried)" if attempt.retryable else "")
        )


def register(app: typer.Typer) -> None:
    app.command("deliveries")(deliveries)
    app.command("redeliver")(redeliver)
    app.add_typer(actions_app, name="actions")
