"""`engine web`: the HTTP API."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from engine import db as enginedb
from engine.settings import get_settings


def web(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8080,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Processes serving requests, each with its own pool of ENGINE_WEB_POOL_SIZE database connections.",
        ),
    ] = 1,
) -> None:
    """Serve the HTTP API (/api/v1, keys from `engine keys create`), /healthz, /metrics and
    /openapi.json until SIGINT/SIGTERM. Stateless: run as many as you need."""
    from engine.web.server import serve

    enginedb.set_application_name("engine-web")
    settings = get_settings()
    logging.getLogger().setLevel(settings.log_level.upper())
    with enginedb.connect() as conn:
        enginedb.ensure_schema(conn)
    import os

    if not settings.database_url:  # worker processes must find the embedded database too
        os.environ["ENGINE_DATABASE_URL"] = enginedb.database_url(settings)
    if settings.web_secret is None:  # one console secret for all workers: their sessions are one
        import secrets

        os.environ["ENGINE_WEB_SECRET"] = secrets.token_urlsafe(32)
        typer.echo(
            "engine web: ENGINE_WEB_SECRET is unset: console sign-ins last until this server stops "
            "(set it, the same on every host, to keep them across restarts and hosts)",
            err=True,
        )
    typer.echo(
        f"engine web: serving http://{host}:{port} (console at /, API under /api/v1, /healthz, /openapi.json)",
        err=True,
    )
    serve(host, port, workers)


def register(app: typer.Typer) -> None:
    app.command("web")(web)
