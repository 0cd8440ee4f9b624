"""`engine rules validate | compile | apply | test | list | show | enable | disable | delete | import-wandb`."""

from __future__ import annotations

import dataclasses
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from engine.actions.ssrf import address_warnings
from engine.cli.backend import Backend, open_backend
from engine.cli.output import Format, FormatOption, is_terminal, parse_when, print_rows, print_table
from engine.compiler import compile_rule
from engine.exceptions import ConfigurationError, RuleValidationError
from engine.rules import lint, load_rules
from engine.rules.loader import LoadedRule
from engine.rules.wandb_import import Refusal, file_name, import_wandb, rule_yaml
from engine.settings import get_settings
from engine.since import HELP as since_help

console = Console()
# Piped output of `rules compile` (scripts, tests) gets 200 columns instead of rich's 80.
sql_console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)
rules_app = typer.Typer(help="Automation rules: validate, apply and manage them.", no_args_is_help=True)

PathsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Rule files or folders (*.yaml, *.yml). Default: ENGINE_RULES_PATH (rules/).", show_default=False
    ),
]
NameArg = Annotated[str, typer.Argument(help="Automation name.")]


def rule_paths(paths: list[Path] | None) -> list[Path]:
    """The paths given, or ENGINE_RULES_PATH; a missing default folder is explained (it is
    relative to the current folder, so running from elsewhere is the usual cause)."""
    if paths:
        return list(paths)
    default = get_settings().rules_path
    if not default.exists():
        raise ConfigurationError(
            f"no rule files given and the default folder {default}/ does not exist in {Path.cwd()}: "
            "pass rule files or folders, or set ENGINE_RULES_PATH."
        )
    return [default]


def _report_issues(error: RuleValidationError) -> None:
    # soft_wrap: one issue per line whatever the terminal width, so editors and grep can use them
    for issue in error.issues:
        err_console.print(str(issue), style="red", markup=False, highlight=False, soft_wrap=True)
    count = len(error.issues)
    err_console.print(f"{count} error{'s' if count != 1 else ''}", style="red bold")


def _report_lint(rules: list[LoadedRule]) -> None:
    """Each warning at its field's line: `rules/x.yaml:9: warning: event.operator: ...`."""
    refused = address_warnings([r.automation.action for r in rules], get_settings().webhook_allow_hosts)
    for rule, more in zip(rules, refused, strict=True):
        # the address warnings are about the action's target: `url`, or an incoming `webhook_url`
        target = "action.url" if hasattr(rule.automation.action, "url") else "action.webhook_url"
        found = [(w.field, str(w)) for w in lint(rule.automation)] + [(target, text) for text in more]
        for field_path, warning in found:
            err_console.print(
                f"{rule.file}:{rule.line_of(field_path)}: warning: {warning}",
                style="yellow",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )


def _load(backend: Backend, paths: list[Path], *, check_db: bool = True) -> list[LoadedRule]:
    try:
        return backend.load(paths, check_db=check_db)
    except RuleValidationError as exc:
        _report_issues(exc)
        raise typer.Exit(1) from None


@rules_app.command()
def validate(
    paths: PathsArg = None,
    check_db: Annotated[
        bool, typer.Option("--check-db", help="Also compile the regexes in PostgreSQL (needs the database).")
    ] = False,
) -> None:
    """Check rule files; print every error (exit 1) or `ok: N rules in M files`. Warnings never fail.

    With ENGINE_URL set, engine web checks them too (as --check-db does)."""
    with open_backend() as backend:
        rules = _load(backend, rule_paths(paths), check_db=check_db)
    _report_lint(rules)
    files = len({rule.file for rule in rules})
    console.print(
        f"ok: {len(rules)} rule{'s' if len(rules) != 1 else ''} in {files} file{'s' if files != 1 else ''}"
    )


@rules_app.command()
def apply(
    paths: PathsArg = None,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Delete stored automations that are not in these files (their trigger history is kept).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Only say what would be created, updated, unchanged and deleted; change nothing.",
        ),
    ] = False,
) -> None:
    """Create or update automations by name (says created / updated / unchanged / deleted)."""
    with open_backend() as backend:
        rules = _load(backend, rule_paths(paths))
        _report_lint(rules)
        try:
            results = backend.apply(rules, prune=prune, dry_run=dry_run)
        except RuleValidationError as exc:
            _report_issues(exc)
            raise typer.Exit(1) from None
    if dry_run:  # on stderr: stdout has the same lines as a real apply, for scripts
        err_console.print("dry run: nothing was changed; apply would do this:", markup=False, highlight=False)
    for name, outcome in results:
        console.print(f"{outcome:<9} {name}", markup=False, highlight=False)


# The keys of `engine rules list --format json|tsv` (the fields of automations.AutomationRow).
LIST_KEYS = ("name", "enabled", "version", "rule_type", "scope", "triggers", "updated_at", "last_error")


@rules_app.command("list")
def list_(fmt: FormatOption = Format.table) -> None:
    """Stored automations: enabled, version, event, scope, triggers fired; then any last errors."""
    with open_backend() as backend:
        rows = backend.automations()
    if fmt is not Format.table:
        print_rows([dataclasses.asdict(row) for row in rows], LIST_KEYS, fmt)
        return
    if not rows:
        console.print("no automations (apply some with `engine rules apply`)")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("on")
    table.add_column("v", justify="right")
    table.add_column("event", no_wrap=True)
    table.add_column("scope", overflow="fold")
    table.add_column("fired", justify="right")
    wide = not is_terminal() or console.width >= 100  # an 80-column terminal keeps what matters most
    if wide:
        table.add_column("updated", no_wrap=True)
    for row in rows:
        cells = [
            escape(row.name),
            "yes" if row.enabled else "[dim]no[/dim]",
            str(row.version),
            escape(row.rule_type),
            escape(row.scope),
            str(row.triggers),
        ]
        table.add_row(*cells, *([row.updated_at.strftime("%Y-%m-%d %H:%M")] if wide else []))
    print_table(table)
    # Errors are long; under the table they keep the columns readable.
    for row in rows:
        if row.last_error:
            console.print(f"[bold]{escape(row.name)}[/bold]: last error: [red]{escape(row.last_error)}[/red]")


@rules_app.command()
def show(name: NameArg) -> None:
    """The stored rule as YAML, its condition in words, its version and evaluation state."""
    with open_backend() as backend:
        stored = backend.automation(name)
    state = stored.state
    header = {
        "version": stored.version,
        "enabled": stored.enabled,
        "source": stored.source,
        "created_at": stored.created_at.isoformat(),
        "updated_at": stored.updated_at.isoformat(),
        "evaluate_from": stored.evaluate_from.isoformat(),
    }
    if state is not None:
        header |= {
            "frontier_xid": state.frontier,
            "evaluated_at": state.evaluated_at.isoformat() if state.evaluated_at else None,
            "triggers": state.triggers,
            "last_fired_at": state.last_fired_at.isoformat() if state.last_fired_at else None,
            "last_error": state.last_error,
            "failures": state.failures,
        }
    rule = stored.automation.model_dump(mode="json", exclude_none=True)
    print(yaml.safe_dump(rule, sort_keys=False, allow_unicode=True).rstrip())
    print(
        f"# condition: {stored.automation.event.describe()}"
    )  # as ${metric_filter} and `engine explain` say it
    print("# ---- stored state")
    for line in yaml.safe_dump(header, sort_keys=False, allow_unicode=True).splitlines():
        print(f"# {line}")


@rules_app.command()
def enable(name: NameArg) -> None:
    """Enable an automation; it reacts to what is logged from now on."""
    with open_backend() as backend:
        changed = backend.set_enabled(name, True)
    console.print(
        f"enabled {name}" if changed else f"{name} was already enabled", markup=False, highlight=False
    )


@rules_app.command()
def disable(name: NameArg) -> None:
    """Disable an automation (kept, with its history)."""
    with open_backend() as backend:
        changed = backend.set_enabled(name, False)
    console.print(
        f"disabled {name}" if changed else f"{name} was already disabled", markup=False, highlight=False
    )


@rules_app.command()
def delete(
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an automation: it stops being evaluated and its name is free again. Its trigger
    history is kept (engine history --automation NAME) and deliveries still pending are sent."""
    with open_backend() as backend:
        backend.automation(name)  # NotFound (with suggestions) before asking anything
        if not yes and not typer.confirm(f"delete {name!r}? (its trigger history is kept)"):
            raise typer.Exit(1)
        backend.delete(name)
    console.print(f"deleted {name}", markup=False, highlight=False)


@rules_app.command("compile")
def compile_command(
    paths: list[Path] = typer.Argument(None, help="Rule files or folders (default: ENGINE_RULES_PATH)."),
    mode: str = typer.Option("live", "--mode", help="live (incremental) or history (backtest)."),
) -> None:
    """Print the SQL each rule compiles to, with its bound parameters."""
    for loaded in load_rules(rule_paths(paths)):
        compiled = compile_rule(loaded.automation, "history" if mode == "history" else "live")
        sql_console.rule(f"{compiled.automation} ({compiled.kind}, {compiled.mode})")
        sql_console.print(Syntax(compiled.pretty(), "sql", word_wrap=True))
        sql_console.print({k: v for k, v in compiled.params.items()})


@rules_app.command("test")
def test_command(
    paths: list[Path] = typer.Argument(None, help="Rule files or folders (default: ENGINE_RULES_PATH)."),
    start: datetime = typer.Option("7d", "--since", parser=parse_when, metavar="WHEN", help=since_help),
) -> None:
    """Backtest: what the rules would have fired over stored history. Sends and writes nothing."""
    with open_backend() as backend:
        for item in backend.load(rule_paths(paths), check_db=True):
            firings = backend.backtest(item, start)
            table = Table(
                "time",
                "run",
                "step",
                "value",
                "alias/tag",
                title=f"{item.automation.name}: {len(firings)} would fire"
                + (
                    " (stop_run: each run would be asked to stop)"
                    if item.automation.action.type == "stop_run"
                    else ""
                ),
            )
            for f in firings:
                table.add_row(
                    f.time.strftime("%Y-%m-%d %H:%M:%S"),
                    f.run,
                    "" if f.step is None else str(f.step),
                    "" if f.value is None else f"{f.value:.6g}",
                    f.alias_or_tag,
                )
            print_table(table)


@rules_app.command("import-wandb")
def import_wandb_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="JSON files of W&B automations: the wandb SDK's Automation objects dumped "
            "(model_dump), or raw GraphQL triggers / responses.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write one rule file per automation into this folder (default: YAML on stdout)."
        ),
    ] = None,
    entity: Annotated[
        str | None,
        typer.Option(
            "--entity", help="Entity of W&B's project names (a scope naming its own entity keeps it)."
        ),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option("--registry", help="Registry of W&B registry collections whose JSON does not name it."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite rule files that exist in --out.")] = False,
) -> None:
    """Convert W&B automations (JSON) into rule files. What cannot be converted is listed with
    the automation's name and the field (exit 1); the others are still written. Secrets the
    rules need are listed last, as the environment variables to set."""
    sources: list[tuple[str, str]] = []
    unreadable = 0
    for path in files:
        try:
            sources.append((str(path), path.read_text(encoding="utf-8-sig")))
        except (OSError, UnicodeDecodeError) as exc:
            err_console.print(f"{path}: cannot read: {exc}", style="red", markup=False, highlight=False)
            unreadable += 1
    result = import_wandb(sources, entity=entity, registry=registry)
    documents = [(item, rule_yaml(item)) for item in result.converted]
    written: list[Path] = []
    if out is None:
        sys.stdout.write("---\n".join(text for _, text in documents))
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            err_console.print(
                f"{out}: cannot create the folder: {exc}", style="red", markup=False, highlight=False
            )
            raise typer.Exit(1) from None
        taken: set[str] = set()
        for item, text in documents:
            name = file_name(item.automation.name)
            stem, n = name.removesuffix(".yaml"), 2
            while name in taken:
                name, n = f"{stem}-{n}.yaml", n + 1
            taken.add(name)
            target = out / name
            if target.exists() and not force:
                result.refusals.append(
                    Refusal(item.source, item.wandb_name, "", f"{target} exists (--force overwrites it)")
                )
                continue
            try:
                target.write_text(text, encoding="utf-8")
            except OSError as exc:
                result.refusals.append(
                    Refusal(item.source, item.wandb_name, "", f"cannot write {target}: {exc}")
                )
                continue
            written.append(target)
            console.print(f"wrote {target}  ({item.automation.name})", markup=False, highlight=False)
    report = console if out is not None else err_console
    for item in result.converted:
        for note in item.notes:
            err_console.print(
                f"{item.source}: automation {item.wandb_name!r}: note: {note}",
                style="yellow",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    for refusal in result.refusals:
        err_console.print(f"refused: {refusal}", style="red", markup=False, highlight=False, soft_wrap=True)
    converted = len(written) if out is not None else len(documents)
    refused = len(result.refusals) + unreadable
    report.print(f"converted {converted}, refused {refused}", markup=False, highlight=False)
    if result.placeholders:
        report.print("set these environment variables (the rules name them as {env: NAME}):", markup=False)
        for placeholder in sorted(result.placeholders.values(), key=lambda p: p.env):
            report.print(
                f"  {placeholder.env}: {placeholder.meaning}", markup=False, highlight=False, soft_wrap=True
            )
    if result.urls:
        report.print(
            "replace these placeholder URLs in the rules (W&B's JSON does not carry them):", markup=False
        )
        for url, meaning in sorted(result.urls.items()):
            report.print(f"  {url}: {meaning}", markup=False, highlight=False, soft_wrap=True)
    if refused:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")
