"""`engine doctor`: check the installation and say what to fix (see engine/doctor.py)."""

from __future__ import annotations

import typer

from engine.settings import get_settings


def doctor(
    timeout: float = typer.Option(
        3.0, "--timeout", min=0.1, help="Seconds for each connection attempt (database, webhook targets)."
    ),
) -> None:
    """Check the database, TimescaleDB, migrations, rules, action targets and deliveries.

    Each check prints ✓ (fine), ! (worth a look), ✗ (wrong, with the fix) or – (not checked: no
    database, or a privilege this role lacks, named with the grant). Exit code 1 when a check failed.
    """
    from engine.doctor import run_checks

    checks = run_checks(get_settings(), timeout=timeout)
    for check in checks:
        typer.echo(check.render())
    failed = [c for c in checks if c.status == "fail"]
    skipped = [c for c in checks if c.status == "skip"]
    not_checked = f", {len(skipped)} not checked (–)" if skipped else ""
    if failed:
        typer.echo(f"\n{len(failed)} of {len(checks)} checks failed{not_checked}.")
        raise typer.Exit(1)
    if skipped:
        typer.echo(f"\n{len(checks) - len(skipped)} of {len(checks)} checks passed{not_checked}.")
    else:
        typer.echo(f"\nall {len(checks)} checks passed.")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
