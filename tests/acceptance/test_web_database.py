"""`engine web` on the engine's own pool (engine/db.py's Database): while the database is
down every request answers 503 with the reason and /healthz says so, connections broken by
the outage are replaced once it is back, and a value the database (or its driver) refuses is
the client's 422, never a 500."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.acceptance.service_helpers import wait_until
from tests.acceptance.web_helpers import WebProcess, make_key
from tests.integration.db_proxy import Proxy


def test_a_database_outage_is_a_503_and_the_pool_recovers_after_it(conn, database_url, pg_cluster, tmp_path):
    p = Proxy(Path(pg_cluster.socket_dir) / ".s.PGSQL.5432")
    p.up()
    key = make_key(conn, "trainer", "ingest", "acme/*")
    try:
        with WebProcess(p.url(conninfo_to_dict(database_url)["dbname"]), tmp_path / "web.log") as web:
            with web.client(key) as http:
                assert (
                    http.post("/api/v1/runs", json={"project": "acme/vision", "id": "o1"}).status_code == 201
                )

                p.down()  # the pooled connections break, new ones are refused
                health = http.get("/healthz")
                assert health.status_code == 503
                assert health.json()["status"] == "unavailable"
                assert "no database reachable" in health.json()["database"]
                refused = http.post("/api/v1/runs", json={"project": "acme/vision", "id": "o2"})
                assert refused.status_code == 503, refused.text
                assert refused.headers["Retry-After"] == "1"
                assert "no database reachable" in refused.json()["detail"]

                p.up()
                assert wait_until(lambda: http.get("/healthz").status_code == 200, timeout=30), web.log()
                assert (
                    http.post("/api/v1/runs", json={"project": "acme/vision", "id": "o2"}).status_code == 201
                )
    finally:
        p.down()
    assert conn.execute("SELECT count(*) FROM runs WHERE run_id IN ('o1', 'o2')").fetchone() == (2,)


@pytest.mark.parametrize(
    "field",
    [
        {"config": {"note": "a\u0000b"}},  # JSON's \u0000: jsonb refuses it (SQLSTATE 22P05)
        {"user": "a\u0000b"},  # a NUL byte in text: psycopg refuses it before sending (no SQLSTATE)
    ],
    ids=["server", "driver"],
)
def test_a_value_the_database_refuses_is_the_clients_422(conn, database_url, tmp_path, field):
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client(key) as http:
        answer = http.post("/api/v1/runs", json={"project": "acme/vision", "id": "nul", **field})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"].startswith("the database refused a value"), answer.text
        assert http.get("/healthz").status_code == 200
    assert conn.execute("SELECT count(*) FROM runs WHERE run_id = 'nul'").fetchone() == (0,)
