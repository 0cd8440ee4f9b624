"""`engine demo`: the whole story in about twenty seconds, on the embedded database (or
ENGINE_DATABASE_URL): the example rules applied, a local webhook receiver, the evaluation
service, simulated training runs, and then what fired, what was received, and the SQL to
look at it yourself. The parts live in engine/demo/ (receiver, rules, scenario).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
import typer
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from engine import automations, clock
from engine import db as enginedb
from engine.demo.rules import EXAMPLES, EXPECTED, HMAC_ENV, SLACK_ENV, demo_rules, example_name
from engine.exceptions import EngineError
from engine.rules import RunStalled
from engine.settings import get_settings

if TYPE_CHECKING:  # imported when the demo runs: other commands need not load the SDK for it
    from engine.demo import receiver as demo_receiver
    from engine.demo.scenario import Scenario

console = Console()

CPU_RULE = "cpu-above-90"
EVALUATE_EVERY = 0.5  # seconds between the in-process service's ticks (5 s by default)
FLUSH_EVERY = "0.2"  # ENGINE_FLUSH_INTERVAL for the demo's process (1 s by default)
_SIGNATURE = {"verified": "[green]✓ valid[/]", "bad": "[red]✗ invalid[/]", "unsigned": "[dim]none[/]"}


@dataclass
class Progress:
    """The demo's automations as the database sees them."""

    fired: dict[str, int]
    in_flight: int
    succeeded: int
    failed: int

    def missing(self, names: list[str]) -> list[str]:
        return [n for n in names if self.fired.get(n, 0) < EXPECTED[example_name(n)].at_least]


HELP = (
    "A self-contained end-to-end demonstration, in under a minute.\n\n"
    "Applies the example rules of rules/ (as `demo.<name>`, scoped to a new project "
    "acme/vision-demo-<time>, all actions sent to a local receiver), starts a webhook receiver "
    "on 127.0.0.1 (port 8765, or a free one) that checks the HMAC signature, and the evaluation "
    "service in this process. Then it simulates training runs with the SDK: a sweep whose "
    "accuracy climbs past 0.6, a loss that plateaus then drops, a loss that goes NaN (an alert, "
    "a failed run), a loss spike (z-score), a killed run, a CPU burst in the system metrics, a "
    "dataset version becoming `latest`, a model promoted to `production`, linked into the "
    "`model` registry and tagged, and a run that hangs (its stall rule's 30 minutes pass in 3 s "
    "of demo time: only the demo's stall rules look ahead on the clock). It ends with the trigger "
    "history, the deliveries received and the SQL to inspect them. The demo's automations are "
    "disabled at the end, so they never react to your own runs.\n\n"
    "Uses the embedded database under ENGINE_DATA_DIR, or ENGINE_DATABASE_URL when it is set. "
    "Running it again tells the same story in a new project."
)


def demo(
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            metavar="PATH",
            help="Folder of example rules (default: the repository's rules/, else ENGINE_RULES_PATH).",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=5,
            metavar="SECONDS",
            help="Give up waiting for the expected triggers after this long.",
        ),
    ] = 60.0,
) -> None:
    """A self-contained end-to-end demonstration (help text: HELP)."""
    from engine.demo import receiver as demo_receiver
    from engine.demo.scenario import SAMPLE_INTERVAL, CpuBurst, Scenario

    started = time.monotonic()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120  # a log or a pipe: wide enough for the tables, not 80
    folder = rules or (EXAMPLES if EXAMPLES.is_dir() else get_settings().rules_path)
    if not folder.is_dir():
        raise EngineError(
            f"no example rules in {folder}: run the demo from the project folder, or pass --rules PATH"
        )

    # The demo's own process settings: webhooks may reach the local receiver, and SDK flushes
    # come sooner than the 1 s default so that the story fits in seconds.
    allow = [h for h in os.environ.get("ENGINE_WEBHOOK_ALLOW_HOSTS", "").split(",") if h.strip()]
    os.environ["ENGINE_WEBHOOK_ALLOW_HOSTS"] = ",".join(dict.fromkeys([*allow, "127.0.0.1"]))
    os.environ["ENGINE_FLUSH_INTERVAL"] = FLUSH_EVERY
    os.environ[HMAC_ENV] = secrets.token_urlsafe(24)
    get_settings.cache_clear()
    settings = get_settings()

    where = (
        "ENGINE_DATABASE_URL" if settings.database_url else f"the embedded database under {settings.data_dir}"
    )
    console.print(f"[bold]engine demo[/] on {escape(where)}", soft_wrap=True)
    url = enginedb.database_url(settings)
    with enginedb.connection(url) as conn:
        applied = enginedb.migrate(conn)
    console.print(f"  migrations: {', '.join(applied) if applied else 'schema up to date'}")

    cpu_seen = CpuBurst.measure()
    receiver = demo_receiver.Receiver(secret=os.environ[HMAC_ENV]).start()
    os.environ[SLACK_ENV] = f"{receiver.base_url}/slack"
    service = None
    scenario = None
    try:
        project = f"acme/vision-demo-{clock.now():%Y%m%d-%H%M%S}"
        loaded = demo_rules(folder, project, receiver.base_url)
        wanted = [a for a, _ in loaded]
        sources = {a.name: file for a, file in loaded}
        cpu_note = ""
        if cpu_seen < 95:
            # A machine whose CPUs the demo cannot fill (a container's CPU quota): the demo's copy
            # of the rule asks for less, and says so.
            lowered = max(1, int(cpu_seen * 0.7))
            wanted = [_with_threshold(a, lowered) if example_name(a.name) == CPU_RULE else a for a in wanted]
            cpu_note = (
                f"this machine's CPU reached only {cpu_seen:.0f} % with every core busy, so the demo's copy "
                f"of {CPU_RULE} uses a threshold of {lowered} instead of 90"
            )
        names = [a.name for a in wanted]
        watched = [n for n in names if example_name(n) in EXPECTED]

        with enginedb.connection(url) as conn:
            results = automations.apply_rules(conn, wanted, source=sources)
            after = enginedb.value(conn, "demo_last_trigger")
            others = [r["name"] for r in enginedb.rows(conn, "demo_other_enabled", {"names": names})]
        console.print(
            f"  rules: {len(results)} example rules from {escape(str(folder))} applied as demo.<name> "
            f"({', '.join(sorted({o for _, o in results}))}), scoped to project {project}",
            soft_wrap=True,
        )
        console.print(
            f"  webhook receiver: {receiver.base_url} (checks X-Automation-Signature with {HMAC_ENV}); "
            f"Slack incoming webhook: {SLACK_ENV}={receiver.base_url}/slack",
            soft_wrap=True,
        )
        console.print(
            f"  this process: ENGINE_WEBHOOK_ALLOW_HOSTS={os.environ['ENGINE_WEBHOOK_ALLOW_HOSTS']}, "
            f"ENGINE_FLUSH_INTERVAL={FLUSH_EVERY}, system metrics every {SAMPLE_INTERVAL} s, "
            f"evaluation every {EVALUATE_EVERY} s (and on every flush)",
            soft_wrap=True,
        )
        if cpu_note:
            console.print(f"  [yellow]note:[/] {escape(cpu_note)}", soft_wrap=True)
        if others:
            console.print(
                f"  [yellow]note:[/] the demo's service also evaluates your {len(others)} other enabled "
                f"automation(s) while it runs, as `engine serve` would: {escape(', '.join(others))}",
                soft_wrap=True,
            )

        from engine.scheduler import Service  # imported late: APScheduler is not needed by other commands

        service = Service(settings, interval=EVALUATE_EVERY, url=url)
        service.start()
        stall_rules = {
            a.name: a.event.after
            for a in wanted
            if isinstance(a.event, RunStalled) and a.scope.project == project
        }
        scenario = Scenario(project, stall_rules=stall_rules)
        scenario.start()
        progress = _watch(url, scenario, receiver, watched, after, started, timeout)
        console.print()
    finally:
        if scenario is not None:
            scenario.stop()
        if service is not None:
            service.stop()
        receiver.stop()
        if service is not None:
            # Also after Ctrl-C: left enabled, demo.model-registry-link would react to your own
            # registry links, posting to a receiver that is gone.
            _disable(url, names)

    with enginedb.connection(url) as conn:
        _report(conn, names, after, receiver, project, started)
    problems = []
    if scenario.error is not None:
        problems.append(f"the simulated training stopped: {type(scenario.error).__name__}: {scenario.error}")
    for name in progress.missing(watched):
        expected = EXPECTED[example_name(name)]
        problem = f"{name} fired {progress.fired.get(name, 0)} time(s), expected at least {expected.at_least} ({expected.because})"
        if example_name(name) == CPU_RULE:
            with enginedb.connection(url) as conn:
                peak = enginedb.value(
                    conn, "demo_cpu_peak", dict(zip(("entity", "project"), project.split("/")))
                )
            problem += f"; the highest system/cpu sample was {peak if peak is not None else 'none'}"
        problems.append(problem)
    if progress.failed:
        problems.append(f"{progress.failed} deliveries failed (see the last_error column above)")
    if progress.in_flight:
        problems.append(f"{progress.in_flight} deliveries were still pending when the demo stopped")
    if cpu_note:
        console.print(f"[yellow]note:[/] {escape(cpu_note)}.", soft_wrap=True)
    if problems:
        for problem in problems:
            console.print(f"[red]problem:[/] {escape(problem)}", soft_wrap=True)
        raise typer.Exit(1)


def _disable(url: str, names: list[str]) -> None:
    try:
        with enginedb.connection(url) as conn:
            for name in names:
                automations.disable(conn, name)
    except EngineError as exc:  # the database went away: say so, without hiding the first error
        console.print(
            f"[yellow]could not disable the demo's automations: {escape(str(exc))}[/]", soft_wrap=True
        )


def _with_threshold(automation: Any, threshold: float) -> Any:
    data = automation.to_json()
    data["event"]["threshold"] = threshold
    data["description"] = (
        f"{data.get('description', '')} (demo copy: threshold lowered to {threshold})".strip()
    )
    return type(automation).model_validate(data)


# -- while it runs ------------------------------------------------------------------------------
def _progress(conn: psycopg.Connection, names: list[str], after: int) -> Progress:
    rows = conn.execute(enginedb.query("demo_progress"), {"names": names, "after": after}).fetchall()
    return Progress(
        fired={r[0]: r[1] for r in rows},
        in_flight=sum(r[2] for r in rows),
        succeeded=sum(r[3] for r in rows),
        failed=sum(r[4] for r in rows),
    )


def _watch(
    url: str,
    scenario: Scenario,
    receiver: demo_receiver.Receiver,
    names: list[str],
    after: int,
    started: float,
    timeout: float,
) -> Progress:
    """Show the live table until every expected trigger exists and its delivery is settled."""
    deadline = time.monotonic() + timeout
    settled_since: float | None = None
    with enginedb.connection(url) as conn, Live(console=console, refresh_per_second=4) as live:
        while True:
            progress = _progress(conn, names, after)
            if any(progress.fired.get(name) for name in scenario.stall_rules):
                scenario.stall_fired.set()  # resnet-hang was found stalled: it can be killed
            received = receiver.snapshot()
            live.update(_live_view(scenario, progress, received, names, started))
            done = (
                scenario.done.is_set()
                and not progress.missing(names)
                and progress.in_flight == 0
                and len(received) >= progress.succeeded
            )
            # One more evaluation tick with nothing new: whatever the runs caused has fired.
            settled_since = (settled_since or time.monotonic()) if done else None
            if settled_since is not None and time.monotonic() - settled_since >= 2 * EVALUATE_EVERY:
                return progress
            if time.monotonic() > deadline or (scenario.done.is_set() and scenario.error is not None):
                return progress
            time.sleep(0.25)


def _live_view(
    scenario: Scenario,
    progress: Progress,
    received: list[demo_receiver.Received],
    names: list[str],
    started: float,
) -> Group:
    runs = Table(
        box=box.SIMPLE_HEAD, title=f"runs of {scenario.project}", title_justify="left", pad_edge=False
    )
    for column in ("run", "state", "step", "accuracy", "loss", "note"):
        numeric = column in ("step", "accuracy", "loss")
        runs.add_column(column, no_wrap=True, overflow="ellipsis", justify="right" if numeric else "left")
    for view in scenario.views.values():
        style = {"finished": "green", "failed": "red", "killed": "magenta", "running": "yellow"}.get(
            view.state, "dim"
        )
        runs.add_row(
            view.name,
            f"[{style}]{view.state}[/]",
            "" if view.step < 0 else str(view.step),
            _number(view.metrics.get("accuracy")),
            _number(view.metrics.get("loss")),
            escape(view.note),
        )
    rules = Table(
        box=box.SIMPLE_HEAD, title="automations (demo.<example rule>)", title_justify="left", pad_edge=False
    )
    for column in ("rule", "fired", "expected", "because"):
        rules.add_column(
            column,
            no_wrap=True,
            overflow="ellipsis",
            justify="right" if column in ("fired", "expected") else "left",
        )
    for name in names:
        expected = EXPECTED[example_name(name)]
        fired = progress.fired.get(name, 0)
        style = "green" if fired >= expected.at_least else "yellow"
        rules.add_row(name, f"[{style}]{fired}[/]", f"≥ {expected.at_least}", escape(expected.because))
    signed = sum(1 for r in received if r.signature == "verified")
    footer = Text.from_markup(
        f"[bold]{escape(scenario.phase)}[/]\n{time.monotonic() - started:.1f} s · {sum(progress.fired.values())} triggers · "
        f"{len(received)} deliveries received ({signed} signed ✓) · {progress.in_flight} in flight"
    )
    return Group(runs, rules, footer)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


# -- at the end ----------------------------------------------------------------------------------
def _what(row: dict[str, Any]) -> str:
    """One trigger in a few words: `avg(accuracy) over 5 > 0.6: 0.615 at step 12`, `alias latest`, ..."""
    kind = row["rule_type"]
    if kind in ("run_metric_threshold", "run_metric_change"):
        return f"{row['condition'] or row['metric']}: {row['value']:.3g} at step {row['step']}"
    if kind == "run_metric_zscore" and row["value"] is not None:
        return f"{row['condition'] or row['metric']}: z = {row['value']:.3g} at step {row['step']}"
    if kind == "run_metric_nonfinite":
        return f"{row['condition'] or row['metric']} at step {row['step']}"
    if kind == "run_stalled" and row["value"] is not None:
        return f"{row['condition'] or 'stalled'}: silent for {row['value']:.0f} s on the demo's clock"
    if kind == "run_state":
        return f"{row['from_state'] or 'new'} → {row['to_state']}"
    if kind == "artifact_alias_added":
        return f"alias {row['alias_or_tag']}"
    if kind == "artifact_tag_added":
        return f"tag {row['alias_or_tag']}"
    if kind == "registry_version_linked":
        return f"linked as {row['linked_as']}"
    return kind.replace("_", " ")


def _report(
    conn: psycopg.Connection,
    names: list[str],
    after: int,
    receiver: demo_receiver.Receiver,
    project: str,
    started: float,
) -> None:
    rows = enginedb.rows(conn, "demo_history", {"names": names, "after": after})
    history = Table(
        title="trigger history (automation_history)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("id", "fired at", "automation", "run / artifact", "what", "delivery"):
        history.add_column(column, no_wrap=column not in ("what", "delivery"), overflow="fold")
    for row in rows:
        status = row["delivery_status"]
        style = {"succeeded": "green", "failed": "red", "skipped": "dim"}.get(status, "yellow")
        delivery = f"[{style}]{status}[/]" + (f" {escape(row['last_error'])}" if row["last_error"] else "")
        # collection:vN is enough: the project is the demo's
        subject = row["run_name"] or (row["artifact_version"] or "").rsplit("/", 1)[-1]
        history.add_row(
            str(row["trigger_id"]),
            row["fired_at"].astimezone().strftime("%H:%M:%S"),
            escape(row["automation"]),
            escape(subject),
            escape(_what(row)),
            delivery,
        )
    console.print(history)

    owners = {
        r[0]: (r[1], r[2])
        for r in conn.execute(enginedb.query("demo_delivery_owners"), {"names": names, "after": after})
    }
    received = receiver.snapshot()
    table = Table(
        title=f"deliveries received by the local receiver ({receiver.base_url})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("trigger", "automation", "path", "signature", "body"):
        table.add_column(column, no_wrap=True, overflow="ellipsis" if column == "body" else "fold")
    body_width = max(24, console.width - 75)  # the other columns take about 75
    for item in received:
        trigger_id, automation = owners.get(item.delivery_id, ("?", "?"))
        table.add_row(
            str(trigger_id),
            escape(automation),
            escape(item.path),
            _SIGNATURE[item.signature],
            escape(_cut(_body(item), body_width)),
        )
    console.print(table)
    console.print(
        f"[dim]signature ✓: the receiver recomputed X-Automation-Signature = base64(HMAC-SHA256({HMAC_ENV}, body)) "
        "and it matched (an invalid one is answered 401); only demo.accuracy-above-0.6 names a secret. "
        "demo.europe-tag has a no_op action: recorded, never sent. resnet-long was killed: killed runs never trigger.[/]",
        soft_wrap=True,
    )

    engine_cmd = _engine_command()
    entity, name = project.split("/")
    sql = (
        "SELECT trigger_id, automation, run_name, metric, round(value::numeric, 3) AS value, alias, tag, "
        f"artifact_version, delivery_status FROM automation_history WHERE entity = '{entity}' AND project = '{name}' "
        "ORDER BY trigger_id"
    )
    console.print(
        "\n[bold]Look for yourself[/] (the demo's automations are disabled now; their history stays):"
    )
    # soft_wrap: a command broken over two lines could not be pasted
    for line in (
        f'psql "$({engine_cmd} db url)" -c "{sql}"',
        f"{engine_cmd} history --automation demo.loss-down-25pct",
        f"{engine_cmd} deliveries --automation demo.run-failed",
        *([f"{engine_cmd} explain {_first_metric_trigger(rows)}"] if rows else []),
    ):
        console.print(f"  {line}", soft_wrap=True, markup=False, highlight=False)
    if not get_settings().database_url:
        console.print(
            f"The embedded database keeps running; stop it with `{engine_cmd} db down`.",
            soft_wrap=True,
            markup=False,
        )
    console.print(f"done in {time.monotonic() - started:.1f} s", soft_wrap=True)


def _first_metric_trigger(rows: list[dict[str, Any]]) -> int:
    """A trigger worth `engine explain`: the loss change, else any metric trigger, else the first."""
    metric = [r["trigger_id"] for r in rows if r["metric"]]
    loss = [r["trigger_id"] for r in rows if r["metric"] == "loss"]
    return (loss or metric or [rows[0]["trigger_id"]])[0]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _body(item: demo_receiver.Received) -> str:
    data = item.json()
    if isinstance(data, dict) and "blocks" in data:  # a Slack message: its fallback text says it all
        return f"slack: {data.get('text', '')}"
    return item.body.decode("utf-8", "replace")


def _engine_command() -> str:
    """How the user can call this same `engine` again: `engine` when it is on PATH, else its path."""
    argv0 = Path(sys.argv[0])
    on_path = shutil.which("engine")
    if argv0.name == "engine" and on_path and Path(on_path).resolve() == argv0.resolve():
        return "engine"
    if argv0.name != "engine":  # `python -m engine`
        return f"{sys.executable} -m engine"
    try:
        return str(argv0.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(argv0.resolve())


def register(app: typer.Typer) -> None:
    app.command("demo", help=HELP)(demo)
