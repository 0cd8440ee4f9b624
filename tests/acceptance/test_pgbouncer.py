"""120 training processes through PgBouncer (transaction pooling) against a server with
max_connections = 100: none crashes, every point is stored, in order.

The server is a cluster of its own (TCP on 127.0.0.1, SCRAM passwords, the roles of
engine/sql/grants.sql), and the jobs log in as a member of `engine_ingest`. PgBouncer 1.18 (Debian
12) keeps no prepared statement across transactions and hands each transaction any server
connection: the SDK must hold no session state between transactions, and prepares no
statement when it finds a pooler between it and the server.
"""

from __future__ import annotations

import pytest

from engine import db
from tests.team_deployment import PgBouncer, TeamDatabase, run_fleet, stored_series

JOBS = 120
STEPS = 300  # x 2 metrics = 600 points per job, logged over ~3 s
POOL = 20  # server connections PgBouncer may open: well under max_connections


@pytest.mark.slow
def test_120_training_jobs_through_pgbouncer_all_store_every_point() -> None:
    with TeamDatabase(max_connections=100) as database:
        database.login("trainer", "trainer-secret", member_of="engine_ingest")
        with PgBouncer(
            database, {"trainer": "trainer-secret"}, pool_size=POOL, max_client_conn=JOBS + 30
        ) as bouncer:
            # what tells the SDK to prepare no statement through it (engine/sdk/session.py)
            with (
                db.connection(bouncer.url("trainer")) as through,
                db.connection(database.url("trainer", "trainer-secret")) as direct,
            ):
                assert db.is_pooled(through)
                assert not db.is_pooled(direct)

            def monitor() -> dict[str, int]:
                pools = [p for p in bouncer.pools() if p["database"] == "engine"]
                return {
                    "server connections (trainer)": database.backends().get("trainer", 0),
                    "clients at PgBouncer": sum(p["cl_active"] + p["cl_waiting"] for p in pools),
                }

            fleet = run_fleet(
                bouncer.url("trainer"),
                jobs=JOBS,
                steps=STEPS,
                step_seconds=0.01,
                project="acme/bouncer",
                monitor=monitor,
            )
            pool_log = [line for line in bouncer.log if "ERROR" in line or "WARNING" in line]

        assert fleet.failed == [], (
            f"{len(fleet.failed)} jobs failed: {fleet.reasons()}\n{fleet.stderr[-4000:]}"
        )
        assert "Traceback" not in fleet.stderr, fleet.stderr[-6000:]
        with database.admin() as conn:
            series = stored_series(conn, "acme/bouncer")
            states = dict(conn.execute("SELECT state, count(*) FROM runs GROUP BY state").fetchall())
        expected = list(range(STEPS))
        assert sorted(series) == sorted(fleet.codes)
        wrong = {
            run: {k: len(v) for k, v in metrics.items()}
            for run, metrics in series.items()
            if metrics != {"loss": expected, "acc": expected}
        }
        assert wrong == {}, f"runs with missing, extra or reordered points: {wrong}"
        assert states == {"finished": JOBS}
        assert fleet.peaks.get("server connections (trainer)", 0) <= POOL

    # The figures (measured, never asserted on time): see docs/production.md#connection-budget.
    print(
        f"\n{JOBS} jobs x {2 * STEPS} points through PgBouncer (pool {POOL}, max_connections 100): "
        f"all stored in {fleet.seconds:.1f} s; peaks: "
        + ", ".join(f"{name} {value}" for name, value in sorted(fleet.peaks.items()))
        + (f"; PgBouncer said: {pool_log[:5]}" if pool_log else "")
    )
