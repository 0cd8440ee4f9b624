"""`engine explain TRIGGER_ID`: why a rule fired, as a picture in the terminal and a PNG."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.backend import open_backend
from engine.exceptions import ConfigurationError
from engine.explain import render_png, render_terminal

# One string per paragraph: typer keeps the line breaks of a help text as they are.
HELP = (
    "Show why a rule fired.\n\n"
    "For a metric trigger: the metric series of the run, the window(s) the rule used "
    "(threshold: the last N finite values; change: the current window and the prior window "
    "before it), the aggregate(s), the threshold or the change d, and the value that fired, "
    "drawn in the terminal and described below the plot. For an event trigger (run state, "
    "artifact, registry): the event, and the alias, tag or version it matched, in text.\n\n"
    "Example: engine explain 12 --png why.png"
)


def explain(
    trigger_id: Annotated[
        int,
        typer.Argument(min=1, metavar="TRIGGER_ID", help="Trigger id: the `id` column of `engine history`."),
    ],
    png: Annotated[
        Path | None,
        typer.Option(
            "--png",
            metavar="FILE",
            dir_okay=False,
            help="Also write the picture to FILE as a PNG (1000×500 px; needs the png extra: pip install 'engine[png]').",
        ),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option(
            "--width",
            metavar="N",
            min=40,
            max=500,
            help="Width of the terminal plot in characters (default: the terminal's width, at most 160).",
        ),
    ] = None,
) -> None:
    """Show why a rule fired (help text: HELP)."""
    if png is not None and importlib.util.find_spec("matplotlib") is None:
        # Checked first: after the plot and its text, the error would be easy to miss.
        raise ConfigurationError("--png needs matplotlib, which is not installed: pip install 'engine[png]'")
    with open_backend() as backend:  # over HTTP: the same Explanation, as JSON
        expl = backend.explanation(trigger_id)
    width = width or min(shutil.get_terminal_size((100, 30)).columns, 160)
    # Colors only for a person at a terminal (https://no-color.org).
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    typer.echo(render_terminal(expl, width=width, color=color))
    if png is None:
        return
    if not expl.is_metric:
        typer.secho(
            f"error: no PNG: trigger {trigger_id} fired on an event ({expl.rule_type}), which has no metric series to draw",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)
    render_png(expl, png)
    typer.echo(f"wrote {png}")


def register(app: typer.Typer) -> None:
    app.command("explain", help=HELP)(explain)
