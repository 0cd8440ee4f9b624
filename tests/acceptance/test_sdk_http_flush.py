"""When the SDK's writer sends over HTTP (a log request carries one run): a run's `flush` sends
that run's points and no other run's, so it waits behind at most one request of the other runs
of its process; the background thread still sends every buffered run in one pass. Through a real
`engine web` on 127.0.0.1 into the real database."""

from __future__ import annotations

import engine
from tests.acceptance.service_helpers import wait_until
from tests.acceptance.test_sdk_http import stored, use_server
from tests.acceptance.web_helpers import WebProcess, make_key
from tests.integration.sdk_helpers import set_env


def batches(conn) -> list[tuple[str, int]]:
    """(run id, points) of every stored log request, in the order they were stored."""
    return conn.execute(
        "SELECT r.run_id, b.points FROM ingest_batches b JOIN runs r ON r.id = b.run_pk"
        " ORDER BY b.stored_at, b.batch_id"
    ).fetchall()


def test_a_runs_flush_sends_its_own_points_and_no_other_runs(conn, database_url, tmp_path, monkeypatch):
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web:
        use_server(monkeypatch, web, key)
        set_env(monkeypatch, flush_interval=3600)  # nothing is sent unless asked
        runs = {i: engine.init(project="acme/vision", id=f"sweep-{i}") for i in "abc"}
        for step in range(3):
            for run in runs.values():
                run.log({"loss": step / 10, "acc": 1 - step / 10})

        runs["c"].flush()  # the last run to have logged: its points go first, alone
        assert batches(conn) == [("sweep-c", 6)]
        assert stored(conn, "sweep-c") == [(s, k, v) for s in range(3) for k, v in _values(s)]
        assert stored(conn, "sweep-a") == stored(conn, "sweep-b") == []

        runs["c"].flush()  # nothing of its own left: no request at all, not another run's points
        assert len(batches(conn)) == 1

        runs["a"].log({"loss": 0.9})
        for run in runs.values():
            run.finish()
        assert {r: len(stored(conn, f"sweep-{r}")) for r in "abc"} == {"a": 7, "b": 6, "c": 6}
        assert stored(conn, "sweep-a")[-1][:2] == (3, "loss")  # in logging order
        states = conn.execute("SELECT DISTINCT state FROM runs WHERE run_id LIKE 'sweep-%'").fetchall()
        assert states == [("finished",)]


def test_the_background_thread_sends_every_buffered_run_in_one_pass(
    conn, database_url, tmp_path, monkeypatch
):
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web:
        use_server(monkeypatch, web, key)
        # the thread wakes once, when 12 points are buffered, and never on time during the test:
        # a pass that sent only one run's request would leave the other two buffered
        set_env(monkeypatch, flush_interval=3600, flush_max_points=12)
        runs = [engine.init(project="acme/vision", id=f"bg-{i}") for i in range(3)]
        for step in range(2):
            for run in runs:
                run.log({"loss": step / 10, "acc": 1 - step / 10})
        assert wait_until(lambda: len(batches(conn)) == 3, timeout=60), batches(conn)
        assert sorted(batches(conn)) == [("bg-0", 4), ("bg-1", 4), ("bg-2", 4)]
        for run in runs:
            assert stored(conn, run.id) == [(s, k, v) for s in range(2) for k, v in _values(s)]
            run.finish()


def _values(step: int) -> list[tuple[str, float]]:
    return [("loss", step / 10), ("acc", 1 - step / 10)]
