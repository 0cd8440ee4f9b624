"""The run's lock of a log batch (engine/web/ingest.py): waited for at most the given time, the
connection that gave up waits for other locks as before (it goes back to the pool), and the
lock lasts as long as the batch's transaction."""

from __future__ import annotations

import psycopg
import pytest

from engine import db
from engine.exceptions import LockBusy
from engine.sdk.flush import ORDINAL_BITS
from engine.settings import get_settings
from engine.web import ingest

PATH = ingest.RunPath("acme", "vision", "r1")
NAMES = {"entity": "acme", "project": "vision", "run_id": "r1"}


def test_a_held_run_lock_is_waited_for_only_so_long_and_the_connection_keeps_no_bound(conn, database_url):
    conn.autocommit = True
    ingest.open_run(
        conn, project="acme/vision", name=None, user="u", run_id="r1", config=None, tags=None, resume=False
    )
    (run_pk,) = conn.execute("SELECT id FROM runs WHERE run_id = 'r1'").fetchone()
    holder = psycopg.connect(database_url)  # another request's batch, in its transaction
    try:
        holder.execute(db.query("ingest_lock"), NAMES)
        with pytest.raises(LockBusy, match=r"still being stored \(waited 0.1 s"):
            ingest._lock_run(conn, PATH, "b-1", 0.1)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        holder.close()
    state = ingest._lock_run(conn, PATH, "b-1", 0.1)
    assert state is not None
    # not stored before; no step yet; and the flush's batch id, taken under the lock
    assert state[:-1] == (run_pk, "running", -1, -1, None, None)
    assert state[-1] == conn.execute("SELECT last_value FROM ingest_batch_seq").fetchone()[0]
    assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)
    other = psycopg.connect(database_url, autocommit=True)
    try:  # held by the open transaction, gone with it
        assert other.execute("SELECT pg_try_advisory_lock(1768842087, %s)", (run_pk,)).fetchone() == (False,)
        conn.execute("ROLLBACK")
        assert other.execute("SELECT pg_try_advisory_lock(1768842087, %s)", (run_pk,)).fetchone() == (True,)
    finally:
        other.close()


def test_no_such_run_takes_no_lock_and_answers_none(conn):
    conn.autocommit = True
    assert ingest._lock_run(conn, PATH, "b-1", 0.1) is None
    conn.execute("ROLLBACK")


def test_a_batch_is_stored_under_the_batch_id_taken_with_the_lock(conn):
    """The flush joins the lock's transaction and uses the batch id taken in its round trip:
    one id per stored batch, the points' seq made from it."""
    conn.autocommit = True
    ingest.open_run(
        conn, project="acme/vision", name=None, user="u", run_id="r1", config=None, tags=None, resume=False
    )
    rows = [(None, s, ("loss", "acc"), (1.0 / (s + 1), 0.5)) for s in range(3)]
    (before,) = conn.execute("SELECT nextval('ingest_batch_seq')").fetchone()
    stored = ingest.store_batch(conn, PATH, "b-1", rows, get_settings())
    assert stored.points == 6 and not stored.duplicate
    (taken,) = conn.execute("SELECT last_value FROM ingest_batch_seq").fetchone()
    seqs = [s for (s,) in conn.execute("SELECT seq FROM metric_points ORDER BY seq")]
    assert taken == before + 1  # one id for the batch: the lock's round trip took it, the flush used it
    assert len(seqs) == 6 and {s >> ORDINAL_BITS for s in seqs} == {taken}
