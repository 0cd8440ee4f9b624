"""The run's lock of a log batch (engine/web/ingest.py): waited for at most the given time, and
the connection that gave up waits for other locks as before (it goes back to the pool)."""

from __future__ import annotations

import psycopg
import pytest

from engine import db
from engine.exceptions import LockBusy
from engine.web import ingest


def test_a_held_run_lock_is_waited_for_only_so_long_and_the_connection_keeps_no_bound(conn, database_url):
    conn.autocommit = True
    ingest.open_run(
        conn, project="acme/vision", name=None, user="u", run_id="r1", config=None, tags=None, resume=False
    )
    run = ingest.find_run(conn, "acme", "vision", "r1")
    holder = psycopg.connect(database_url, autocommit=True)
    try:
        holder.execute(db.query("ingest_lock"), {"run_pk": run.pk})
        with pytest.raises(LockBusy, match=r"still being stored \(waited 0.1 s"):
            with ingest._run_lock(conn, run.pk, "b-1", 0.1):
                pytest.fail("the lock was held by another session")
        assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        holder.close()
    with ingest._run_lock(conn, run.pk, "b-1", 0.1) as state:
        assert state.fetchone() == (None, -1, -1)  # not stored before; no step yet
        assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)
