"""Test tiers share one throwaway TimescaleDB cluster per session (started with the same
code as `engine db up`), and every test that needs the database gets a fresh database
cloned from a migrated template, so tests never share state."""

from __future__ import annotations

import ipaddress
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from engine import db as enginedb
from engine.actions import ssrf
from engine.actions.ssrf import IPAddress
from engine.actions.transport import CONNECTIONS
from engine.localdb import LocalDatabase
from engine.sdk import session as sdk_session
from engine.settings import get_settings

TEMPLATE = "engine_template"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The long tests start first: `make test` spreads tests over worker processes, and a long
    # test picked up last would keep one worker busy after the others have finished.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalDatabase]:
    # A folder only we may enter (mkdtemp: 0700): as root the cluster's files then go where the
    # server's user can reach them, as they do for a checkout under /root.
    folder = Path(tempfile.mkdtemp(prefix="engine-test-"))
    # No TimescaleDB background workers: they would hold connections to the template
    # database and make CREATE DATABASE ... TEMPLATE fail.
    cluster = LocalDatabase(folder, fast=True, extra_conf={"timescaledb.max_background_workers": "0"})
    cluster.up()
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    with psycopg.connect(cluster.url(TEMPLATE)) as conn:
        enginedb.migrate(conn)
    yield cluster
    cluster.destroy()


@pytest.fixture
def database_url(pg_cluster: LocalDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, migrated database; ENGINE_DATABASE_URL points at it for the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE))
        )
    url = pg_cluster.url(name)
    monkeypatch.setenv("ENGINE_DATABASE_URL", url)
    monkeypatch.setenv("ENGINE_WEBHOOK_ALLOW_HOSTS", "127.0.0.1,localhost,::1")
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def empty_database_url(pg_cluster: LocalDatabase) -> Iterator[str]:
    """A database with nothing in it (not even TimescaleDB): for tests that migrate from zero."""
    name = "e_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield pg_cluster.url(name)
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test reads the developer's ENGINE_* environment or writes into the work tree."""
    for key in list(os.environ):
        if key.startswith("ENGINE_") and key != "ENGINE_SQL_DIR":
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ENGINE_DATA_DIR", str(tmp_path / "engine-data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _close_sdk_sessions() -> Iterator[None]:
    """Each test's SDK connections are closed when it ends (not LINGER_SECONDS later)."""
    yield
    sdk_session.close_all()


@pytest.fixture(autouse=True)
def _fresh_webhook_connections() -> Iterator[None]:
    """Each test starts with no checked name and no kept webhook connection (a resolver
    layout or a receiver of another test must not answer for it), and closes its own."""
    CONNECTIONS.clear()
    yield
    CONNECTIONS.clear()


# Resolver layouts of `localhost`: this machine's /etc/hosts (and many CI images) give only
# 127.0.0.1, Debian's gives ::1 and 127.0.0.1. Webhook targets are looked up only through
# `ssrf.resolve`, so a test that uses `localhost` takes this fixture and holds under each.
LOCALHOST_LAYOUTS = {
    "v4-only": ["127.0.0.1"],
    "v6-first": ["::1", "127.0.0.1"],
    "v4-first": ["127.0.0.1", "::1"],
}


@pytest.fixture(params=list(LOCALHOST_LAYOUTS.values()), ids=list(LOCALHOST_LAYOUTS))
def localhost_layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[IPAddress]:
    """`localhost` resolves to these addresses, in this order, whatever /etc/hosts says."""
    addresses = [ipaddress.ip_address(a) for a in request.param]
    real = ssrf.resolve

    def resolve(host: str, port: int) -> list[IPAddress]:
        return list(addresses) if host.strip("[]").rstrip(".").lower() == "localhost" else real(host, port)

    monkeypatch.setattr(ssrf, "resolve", resolve)
    return addresses
