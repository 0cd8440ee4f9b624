"""The routes of `engine web` doing their job, over real HTTP: runs and log batches (stored
once however often they are sent), artifacts, automations, history pages, deliveries,
explanations, health, metrics and the OpenAPI document."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psutil
import psycopg

from engine import db
from tests.acceptance.web_helpers import RULE, TwoTeams, WebProcess, make_key
from tests.integration.actions_helpers import fire

# what the batch of the rows and columns tests stores: (key, step) in order
STORED_KEYS_STEPS = [("loss", 0), ("acc", 0), ("loss", 5), ("acc", 5), ("loss", 6)]
RUN = "/api/v1/runs/acme/vision/r1"


def points(conn, run_id: str) -> list[tuple]:
    return conn.execute(
        "SELECT k.key, m.step, m.value FROM metric_points m JOIN metric_keys k ON k.id = m.key_id "
        "JOIN runs r ON r.id = m.run_pk WHERE r.run_id = %s ORDER BY m.seq",
        (run_id,),
    ).fetchall()


def test_runs_and_log_batches_are_stored_once_however_often_they_are_sent(conn, database_url, tmp_path):
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client(key) as http:
        made = http.post(
            "/api/v1/runs", json={"project": "acme/vision", "id": "r1", "name": "resnet", "user": "alice"}
        )
        assert made.status_code == 201, made.text
        assert made.json() == {
            "id": "r1",
            "project": "acme/vision",
            "name": "resnet",
            "user": "alice",
            "state": "running",
            "config": {},
            "tags": [],
            "step": -1,
            "system_step": -1,
        }

        batch = {"batch_id": "b-1", "rows": [
            {"values": {"loss": 0.5, "acc": "NaN"}},
            {"step": 5, "values": {"loss": "Infinity", "acc": "-Infinity"}},
            {"step": 3, "values": {"loss": 0.1}},  # lower than 5: dropped, as run.log drops it
            {"values": {"loss": 0.25}},
        ]}  # fmt: skip
        first = http.post(RUN + "/log", json=batch)
        assert first.status_code == 200, first.text
        assert first.json() == {
            "batch_id": "b-1",
            "duplicate": False,
            "points": 5,
            "dropped_rows": [2],
            "step": 6,
        }
        # the client lost the answer and retries, several times at once: stored once
        with ThreadPoolExecutor(5) as pool:
            again = list(pool.map(lambda _: http.post(RUN + "/log", json=batch), range(5)))
        assert all(r.status_code == 200 and r.json()["duplicate"] for r in again), [r.text for r in again]
        stored = points(conn, "r1")
        assert [(k, s) for k, s, _ in stored] == STORED_KEYS_STEPS
        assert math.isnan(stored[1][2]) and stored[2][2] == math.inf and stored[3][2] == -math.inf

        # bad input: 422 naming the field, nothing stored
        bad = http.post(RUN + "/log", json={"batch_id": "b-2", "rows": [{"values": {"loss": "high"}}]})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "rows.0.values.loss", bad.text
        bad = http.post(RUN + "/log", json={"batch_id": "b-2", "rows": [{"values": {"system/cpu": 1}}]})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "rows.0.values.system/cpu"
        bad = http.post(RUN + "/log", json={"batch_id": "b-2", "rows": [{"step": -1, "values": {}}]})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "rows.0.step"
        assert len(points(conn, "r1")) == 5
        missing = http.post("/api/v1/runs/acme/vision/nope/log", json={"batch_id": "x", "rows": []})
        assert missing.status_code == 404 and "no run 'nope'" in missing.json()["detail"]

        finished = http.post(RUN + "/finish", json={"exit_code": 0})
        assert finished.json() == {"id": "r1", "state": "finished", "changed": True}
        late = http.post(RUN + "/log", json={"batch_id": "b-3", "rows": [{"values": {"loss": 1}}]})
        assert late.status_code == 422 and "is finished" in late.json()["detail"]
        resumed = http.post("/api/v1/runs", json={"project": "acme/vision", "id": "r1", "resume": True})
        assert resumed.status_code == 200 and resumed.json()["state"] == "running"
        after = http.post(RUN + "/log", json={"batch_id": "b-3", "rows": [{"values": {"loss": 1}}]})
        assert after.json()["step"] == 7  # continues after the stored steps
        killed = http.post(RUN + "/kill")
        assert killed.status_code == 403  # an ingest key may not kill

        version = http.post(
            RUN + "/artifacts", json={"name": "mnist", "type": "dataset", "aliases": ["candidate"]}
        )
        assert version.status_code == 201 and version.json()["version"] == "acme/vision/mnist:v0", (
            version.text
        )
        base = "/api/v1/artifacts/acme/vision/mnist"
        assert http.post(base + "/candidate/aliases", json={"alias": "production"}).json() == {
            "changed": True
        }
        assert http.post(base + "/v0/tags", json={"tag": "europe"}).json() == {"changed": True}
        assert http.post(base + "/v0/tags", json={"tag": "europe"}).json() == {"changed": False}
        assert http.post(base + "/v0/tags", json={"tag": "old"}).json() == {"changed": True}
        assert http.delete(base + "/v0/tags/old").json() == {"changed": True}
        assert http.delete(base + "/v0/tags/old").json() == {"changed": False}
        assert http.delete(base + "/v0/aliases/candidate").json() == {"changed": True}
        assert http.delete(base + "/v0/aliases/latest").status_code == 422
        assert conn.execute("SELECT array_agg(alias ORDER BY alias) FROM artifact_aliases").fetchone() == (
            ["latest", "production"],
        )
        assert conn.execute("SELECT array_agg(tag) FROM artifact_tags").fetchone() == (["europe"],)
        refused = http.post(base + "/v0/links", json={"registry": "model", "collection": "resnet"})
        assert refused.status_code == 403  # registry:model is not among the key's scopes
        assert http.get(base + "/latest").status_code == 403  # reading needs the read role
        (author,) = conn.execute("SELECT author FROM events WHERE type = 'artifact_tag_added'").fetchone()
        assert author == "key:trainer"
    assert conn.execute("SELECT last_used_at IS NOT NULL FROM api_keys").fetchone() == (True,)


def test_rows_sent_as_columns_are_stored_as_the_same_rows_would_be(conn, database_url, tmp_path):
    """`columns` (the SDK's form): the rows of the first test, stored the same way (NaN and
    infinities, a lower step dropped, a missing step the next one, two key sets), once; a
    body whose columns do not add up is refused naming the column, nothing stored."""
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client(key) as http:
        assert http.post("/api/v1/runs", json={"project": "acme/vision", "id": "r1"}).status_code == 201
        columns = {
            "keys": [["loss", "acc"], ["loss"]],
            "keyset": [0, 0, 1, 1],
            "step": [None, 5, 3, None],
            "time": ["2026-01-02T03:04:05Z", None, None, "2026-01-02T03:04:06.5+01:00"],
            "values": [0.5, "NaN", "Infinity", "-Infinity", 0.1, 0.25],
        }
        first = http.post(RUN + "/log", json={"batch_id": "c-1", "columns": columns})
        assert first.status_code == 200, first.text
        assert first.json() == {
            "batch_id": "c-1",
            "duplicate": False,
            "points": 5,
            "dropped_rows": [2],
            "step": 6,
        }
        again = http.post(RUN + "/log", json={"batch_id": "c-1", "columns": columns})
        assert again.json()["duplicate"] and again.json()["points"] == 0
        stored = points(conn, "r1")
        assert [(k, s) for k, s, _ in stored] == STORED_KEYS_STEPS
        assert stored[0][2] == 0.5 and math.isnan(stored[1][2]) and stored[2][2] == math.inf
        assert stored[3][2] == -math.inf and stored[4][2] == 0.25
        times = conn.execute(
            "SELECT m.step, m.time FROM metric_points m JOIN runs r ON r.id = m.run_pk "
            "WHERE r.run_id = 'r1' AND m.step IN (0, 6) ORDER BY m.seq"
        ).fetchall()
        assert [(s, t.isoformat()) for s, t in times[::2]] == [
            (0, "2026-01-02T03:04:05+00:00"),
            (6, "2026-01-02T02:04:06.500000+00:00"),
        ]

        def refused(body: dict, field: str) -> None:
            answer = http.post(RUN + "/log", json={"batch_id": "c-2", **body})
            assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == field, answer.text

        one = {"keys": [["loss"]], "step": [7, 8], "values": [1.0, 2.0]}
        refused({"columns": {**one, "values": [1.0]}}, "columns.values")
        refused({"columns": {**one, "time": [None]}}, "columns.time")
        refused({"columns": {**one, "time_us": [None]}}, "columns.time_us")
        refused({"columns": {**one, "time_us": [None, None], "time": [None, None]}}, "columns.time_us")
        refused({"columns": {**one, "time_us": [0, 253_402_300_800_000_000]}}, "columns.time_us.1")
        refused({"columns": {**one, "keyset": [0]}}, "columns.keyset")
        refused({"columns": {**one, "keyset": 1}}, "columns.keyset")
        refused({"columns": {**one, "keys": [["system/cpu"]]}}, "columns.keys.0")
        refused({"columns": {**one, "keys": [["loss", "loss"]], "values": [1.0] * 4}}, "columns.keys.0")
        refused({"columns": {**one, "values": [1.0, "high"]}}, "columns.values.1")
        refused({"columns": {**one, "step": [7, -1]}}, "columns.step.1")
        refused({"columns": one, "rows": [{"values": {"loss": 1}}]}, "columns")
        assert len(points(conn, "r1")) == 5
        stored_one = http.post(RUN + "/log", json={"batch_id": "c-2", "columns": one})
        assert stored_one.json()["points"] == 2 and len(points(conn, "r1")) == 7
        # times as microseconds since the Unix epoch (the SDK's form): the same instants
        at_us = {**one, "step": [9, 10], "time_us": [1_767_323_045_000_000, None]}
        assert http.post(RUN + "/log", json={"batch_id": "c-3", "columns": at_us}).json()["points"] == 2
        assert conn.execute(
            "SELECT m.time FROM metric_points m JOIN runs r ON r.id = m.run_pk WHERE r.run_id = 'r1' AND m.step = 9"
        ).fetchone()[0] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_last_batch_ends_its_run_in_the_same_request_and_a_retry_answers_the_same(
    conn, database_url, tmp_path
):
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client(key) as http:
        assert http.post("/api/v1/runs", json={"project": "acme/vision", "id": "r1"}).status_code == 201
        last = {"batch_id": "last", "rows": [{"values": {"loss": 0.5}}], "finish": {"exit_code": 3}}
        first = http.post(RUN + "/log", json=last)
        assert first.status_code == 200, first.text
        assert first.json()["finished"] == {"id": "r1", "state": "failed", "changed": True}
        # the answer was lost: the retry stores nothing again and answers the run's state
        again = http.post(RUN + "/log", json=last)
        assert again.status_code == 200, again.text
        assert again.json()["duplicate"] and again.json()["finished"] == {
            "id": "r1",
            "state": "failed",
            "changed": False,
        }
        # another batch for the ended run is refused as before
        late = http.post(RUN + "/log", json={**last, "batch_id": "late"})
        assert late.status_code == 422 and "resume it" in late.json()["detail"], late.text
    assert points(conn, "r1") == [("loss", 0, 0.5)]
    states = conn.execute(
        "SELECT t.to_state FROM run_transitions t JOIN runs r ON r.id = t.run_pk WHERE r.run_id = 'r1' ORDER BY t.id"
    ).fetchall()
    assert states[-1] == ("failed",) and len([s for s in states if s == ("failed",)]) == 1


def test_a_batch_waits_for_its_runs_previous_one_only_so_long_then_503_and_the_retry_stores_it_once(
    conn, database_url, tmp_path
):
    """A retry sent while the server still stores the first attempt (the client gave up on it)
    waits for the run's lock at most ENGINE_WEB_LOCK_WAIT, answers 503 with Retry-After and
    stores nothing; once the lock is free the batch is stored, once."""
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with (
        WebProcess(database_url, tmp_path / "web.log", ENGINE_WEB_LOCK_WAIT="0.2") as web,
        web.client(key) as http,
    ):
        assert http.post("/api/v1/runs", json={"project": "acme/vision", "id": "r1"}).status_code == 201
        batch = {"batch_id": "b-1", "rows": [{"values": {"loss": 0.5}}, {"values": {"loss": 0.25}}]}
        holder = psycopg.connect(database_url)  # in a transaction: the lock is held until it ends
        try:  # another request's store, stuck: it holds the run's lock
            holder.execute(db.query("ingest_lock"), {"entity": "acme", "project": "vision", "run_id": "r1"})
            busy = http.post(RUN + "/log", json=batch)
            assert busy.status_code == 503, busy.text
            assert busy.headers["Retry-After"] == "1"
            assert (
                "still being stored" in busy.json()["detail"]
                and "send this batch again" in busy.json()["detail"]
            )
            assert points(conn, "r1") == []
        finally:
            holder.close()  # the stuck store ends: its lock goes with its transaction
        stored = http.post(RUN + "/log", json=batch)
        assert stored.status_code == 200 and stored.json()["points"] == 2, stored.text
        again = http.post(RUN + "/log", json=batch)
        assert again.status_code == 200 and again.json()["duplicate"], again.text
    assert points(conn, "r1") == [("loss", 0, 0.5), ("loss", 1, 0.25)]


def test_automations_history_deliveries_and_explanations(conn, database_url, tmp_path):
    teams = TwoTeams(conn)
    admin = make_key(conn, "ci", "admin", "acme/*")
    reader = make_key(conn, "analyst", "read", "acme/*", "registry:model")
    (acme_id,) = conn.execute("SELECT id FROM automations WHERE name = 'acme-rule'").fetchone()
    (run_pk,) = conn.execute("SELECT id FROM runs WHERE run_id = 'run-a'").fetchone()
    action = {"type": "webhook", "url": "https://hooks.example.com/x", "max_attempts": 1}
    fired = [fire(conn, acme_id, [action], run_pk=run_pk, step=s) for s in range(5)]
    with (
        WebProcess(database_url, tmp_path / "web.log") as web,
        web.client(admin) as ci,
        web.client(reader) as analyst,
    ):
        # history: newest first, pages joined by the cursor, only the key's projects
        seen, cursor = [], None
        while True:
            page = analyst.get(
                "/api/v1/history", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
            ).json()
            seen += page["rows"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [r["trigger_id"] for r in seen] == sorted((t for t, _ in fired), reverse=True)
        assert {r["automation"] for r in seen} == {"acme-rule"} and teams.trigger_id not in {
            r["trigger_id"] for r in seen
        }
        assert set(seen[0]) >= {"trigger_id", "fired_at", "automation", "event_type", "entity", "project", "run_id",
                                "metric", "value", "step", "delivery_status", "attempts"}  # fmt: skip
        assert analyst.get("/api/v1/history", params={"project": "other/proj"}).json()["rows"] == []
        assert analyst.get("/api/v1/history", params={"cursor": "garbage"}).status_code == 422
        assert (
            analyst.get("/api/v1/history", params={"since": "yesterday-ish"}).json()["errors"][0]["field"]
            == "since"
        )

        deliveries = analyst.get("/api/v1/deliveries").json()
        assert len(deliveries) == 5 and {d["automation"] for d in deliveries} == {"acme-rule"}
        delivery_id = deliveries[0]["id"]
        assert analyst.post(f"/api/v1/deliveries/{delivery_id}/redeliver").status_code == 403
        redo = ci.post(f"/api/v1/deliveries/{delivery_id}/redeliver")
        assert redo.status_code == 200 and redo.json()["status"] == "pending", redo.text

        why = analyst.get(f"/api/v1/triggers/{fired[0][0]}/explain")
        assert why.status_code == 200 and why.json()["trigger_id"] == fired[0][0], why.text
        assert analyst.get("/api/v1/triggers/999999/explain").status_code == 404

        # automations: validate names line and field; apply and prune only inside the key's scopes
        invalid = analyst.post(
            "/api/v1/automations/validate",
            json={"yaml": RULE.format(name="x", project="acme/vision").replace("window: 1", "window: 0")},
        )
        assert invalid.json()["valid"] is False
        assert invalid.json()["errors"][0] | {"message": ""} == {
            "line": 3,
            "field": "event.window",
            "message": "",
        }
        new = RULE.format(name="acme-new", project="acme/vision")
        applied = ci.post("/api/v1/automations/apply", json={"yaml": new, "prune": True})
        assert applied.status_code == 200, applied.text
        assert sorted((o["name"], o["outcome"]) for o in applied.json()) == [
            ("acme-new", "created"),
            ("acme-rule", "deleted"),
        ]
        names = [a["name"] for a in analyst.get("/api/v1/automations").json()]
        assert names == ["acme-new"]  # other-rule still exists, but is not the analyst's to see
        assert conn.execute(
            "SELECT deleted_at IS NULL FROM automations WHERE name = 'other-rule'"
        ).fetchone() == (True,)
        assert analyst.get("/api/v1/automations/acme-new").json()["rule"]["scope"]["project"] == "acme/vision"
        assert ci.post("/api/v1/automations/acme-new/disable").json() == {"changed": True}
        assert ci.post("/api/v1/automations/acme-new/enable").json() == {"changed": True}
        assert ci.delete("/api/v1/automations/acme-new").json() == {"changed": True}
        gone = analyst.get("/api/v1/automations/acme-new")
        assert gone.status_code == 404 and "acme-new" in gone.json()["detail"]
        tried = analyst.post("/api/v1/automations/backtest", json={"yaml": new, "since": "30d"})
        assert tried.status_code == 200 and tried.json()[0]["automation"] == "acme-new", tried.text

        with web.client() as anonymous:
            assert anonymous.get("/healthz").json()["status"] == "ok"
            metrics = anonymous.get("/metrics").text
            assert 'engine_web_requests_total{method="GET",route="/history",status="200"}' in metrics
            document = anonymous.get("/openapi.json").json()
            assert {"/api/v1/runs", "/api/v1/runs/{entity}/{project}/{run_id}/log", "/api/v1/history"} <= set(
                document["paths"]
            )
            assert "HTTPBearer" in document["components"]["securitySchemes"]


def test_several_worker_processes_each_hold_one_bounded_pool(conn, database_url, tmp_path):
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log", workers=2, ENGINE_WEB_POOL_SIZE="3") as web:
        with web.client(key) as http:
            assert http.post("/api/v1/runs", json={"project": "acme/vision", "id": "w1"}).status_code == 201

            def send(i: int) -> int:
                batch = {"batch_id": f"b{i}", "rows": [{"values": {"loss": i / 10}}]}
                return http.post("/api/v1/runs/acme/vision/w1/log", json=batch).status_code

            with ThreadPoolExecutor(16) as pool:
                assert set(pool.map(send, range(64))) == {200}
            (connections,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'engine-web' AND datname = current_database()"
            ).fetchone()
        assert 1 <= connections <= 2 * 3
        workers = [
            p for p in psutil.Process(web.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2, [p.cmdline() for p in psutil.Process(web.proc.pid).children()]
    stored = points(conn, "w1")  # each batch once, numbered in the order the processes stored them
    assert [s for _, s, _ in stored] == list(range(64))
    assert sorted(v for _, _, v in stored) == [i / 10 for i in range(64)]


def test_silences_are_added_listed_and_ended_over_http(conn, database_url, tmp_path):
    TwoTeams(conn)  # holds a silence of other/proj's automation
    admin = make_key(conn, "ci", "admin", "acme/*")
    reader = make_key(conn, "analyst", "read", "acme/*")
    with (
        WebProcess(database_url, tmp_path / "web.log") as web,
        web.client(admin) as ci,
        web.client(reader) as analyst,
    ):
        added = ci.post(
            "/api/v1/silences", json={"automation": "acme-rule", "duration": "2h", "reason": "retrain"}
        )
        assert added.status_code == 201, added.text
        silence_id = added.json()["id"]
        until = ci.post(
            "/api/v1/silences",
            json={"project": "acme/vision", "until": "2099-01-01T12:00:00+01:00", "reason": "sweep"},
        )
        assert until.status_code == 201 and until.json()["ends_at"] == "2099-01-01T11:00:00Z"
        for bad, field in (
            ({"automation": "acme-rule", "project": "acme/vision", "duration": "2h"}, "automation"),
            ({"automation": "acme-rule", "duration": "soon"}, "duration"),
            ({"automation": "acme-rule", "until": "2099-01-01T12:00:00"}, "until"),
        ):
            refused = ci.post("/api/v1/silences", json=bad | {"reason": "r"})
            assert refused.status_code == 422, refused.text
            assert field in refused.text
        assert (
            ci.post(
                "/api/v1/silences", json={"automation": "nope", "duration": "2h", "reason": "r"}
            ).status_code
            == 404
        )
        listed = analyst.get("/api/v1/silences").json()  # active first, the one ending last first
        assert [(s["automation"], s["project"], s["reason"]) for s in listed] == [
            (None, "acme/vision", "sweep"),
            ("acme-rule", None, "retrain"),
        ]
        assert all(s["created_by"] == "key:ci" and s["active"] for s in listed)
        ended = ci.post(f"/api/v1/silences/{silence_id}/end")
        assert ended.status_code == 200, ended.text
        assert ci.post(f"/api/v1/silences/{silence_id}/end").status_code == 409  # already ended
        assert [s["reason"] for s in analyst.get("/api/v1/silences").json()] == ["sweep"]
        everything = analyst.get("/api/v1/silences", params={"all": "true"}).json()
        assert {s["reason"]: s["ended_by"] for s in everything} == {"sweep": None, "retrain": "key:ci"}


def test_a_burst_of_requests_larger_than_the_thread_pool_is_served_by_a_small_pool(
    conn, database_url, tmp_path
):
    """More requests at once than the server has threads (40), on a pool of 2 connections:
    the ones without a connection wait on the event loop, not in threads, so the requests
    holding the connections always find a thread to finish in (a burst used to fill every
    thread with waiters and answer 503 to all of them after the checkout timeout)."""
    key = make_key(conn, "trainer", "ingest", "acme/*")
    burst = 120
    with WebProcess(database_url, tmp_path / "web.log", ENGINE_WEB_POOL_SIZE="2") as web:
        with web.client(key) as http:
            for i in range(burst):
                assert (
                    http.post("/api/v1/runs", json={"project": "acme/vision", "id": f"b{i}"}).status_code
                    == 201
                )

        def send(i: int) -> int:
            with web.client(key) as client:
                batch = {"batch_id": "first", "rows": [{"step": 0, "values": {"loss": i / 10}}]}
                return client.post(f"/api/v1/runs/acme/vision/b{i}/log", json=batch, timeout=60).status_code

        with ThreadPoolExecutor(burst) as pool:
            statuses = list(pool.map(send, range(burst)))
    assert statuses == [200] * burst, sorted(set(statuses))
    (stored,) = conn.execute("SELECT count(*) FROM metric_points").fetchone()
    assert stored == burst
