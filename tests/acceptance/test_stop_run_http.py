"""stop_run over HTTP: `engine web`'s log route tells the client that an automation asked its
run to stop (`stop_requested`), GET run shows it, and finishing with `stopped` ends the run
`killed` naming the automation; and end to end, a training loop in a subprocess whose SDK
reaches the engine through `engine web` only (ENGINE_URL + ENGINE_API_KEY, no database URL)
gets `engine.RunStopped` and its run ends `killed` (the database transport's twin:
tests/integration/test_stop_run.py)."""

from __future__ import annotations

from pathlib import Path

from tests.acceptance.service_helpers import ServeProcess
from tests.acceptance.web_helpers import WebProcess, make_key
from tests.integration.evaluation_helpers import apply_yaml, tick
from tests.integration.sdk_helpers import wait_for
from tests.integration.stop_run_helpers import (
    FREE_RUNNING,
    STEPPED,
    over_http,
    run_row,
    start,
    step,
    stop_requests,
)
from tests.integration.stop_run_helpers import STOP_RULE as STOP_RULE_OF

RUN = "/api/v1/runs/acme/vision/r1"
STOP_RULE = STOP_RULE_OF.format(name="stop-on-divergence")
KILLED_BY_THE_RULE = {
    "from": "running",
    "to": "killed",
    "exit_code": None,
    "stopped_by": "stop-on-divergence",
}


def batch(batch_id: str, loss: float) -> dict:
    return {"batch_id": batch_id, "rows": [{"values": {"loss": loss}}]}


def test_the_log_answer_carries_the_stop_request_and_finish_stopped_ends_the_run_killed(
    conn, database_url, tmp_path
):
    apply_yaml(conn, STOP_RULE)
    ingest = make_key(conn, "trainer", "ingest", "acme/*")
    reader = make_key(conn, "dashboard", "read", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client(ingest) as http:
        assert http.post("/api/v1/runs", json={"project": "acme/vision", "id": "r1"}).status_code == 201
        # no request pending: the answer has no stop_requested key, and finish `stopped` is refused
        first = http.post(RUN + "/log", json=batch("b-1", 2e6))
        assert first.status_code == 200 and "stop_requested" not in first.json(), first.text
        refused = http.post(RUN + "/finish", json={"stopped": True})
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "stopped"

        tick(database_url)  # the service fires: trigger and stop request in one transaction

        second = http.post(RUN + "/log", json=batch("b-2", 0.5))
        assert second.status_code == 200, second.text
        assert second.json()["stop_requested"] == {"automation": "stop-on-divergence"}
        assert second.json()["points"] == 1  # the batch was stored all the same
        # a client that lost that answer and sends the batch again learns it too
        again = http.post(RUN + "/log", json=batch("b-2", 0.5))
        assert again.json()["duplicate"] and again.json()["stop_requested"] == {
            "automation": "stop-on-divergence"
        }
        with web.client(reader) as read:
            shown = read.get(RUN)
            assert shown.status_code == 200, shown.text
            expected = {
                "id": "r1",
                "project": "acme/vision",
                "name": "r1",
                "user": None,
                "state": "running",
                "stop_requested": {"automation": "stop-on-divergence"},
            }
            assert {k: shown.json().get(k) for k in expected} == expected

            ended = http.post(RUN + "/finish", json={"stopped": True})
            assert ended.status_code == 200, ended.text
            assert ended.json() == {"id": "r1", "state": "killed", "changed": True}
            retried = http.post(RUN + "/finish", json={"stopped": True})  # the answer was lost: no change
            assert retried.json() == {"id": "r1", "state": "killed", "changed": False}
            after = read.get(RUN).json()
            assert (after["state"], after["stop_requested"]) == ("killed", None)
            assert read.get("/api/v1/runs/acme/vision/nope").status_code == 404
    (details,) = conn.execute(
        "SELECT e.details FROM events e JOIN runs r ON r.id = e.run_pk WHERE r.run_id = 'r1'"
        " AND e.details->>'to' = 'killed'"
    ).fetchone()
    assert details == KILLED_BY_THE_RULE


def test_a_training_loop_over_http_gets_run_stopped_in_the_flush_after_the_firing_and_ends_killed(
    conn, database_url, tmp_path
):
    apply_yaml(conn, STOP_RULE)
    key = make_key(conn, "trainer", "ingest", "acme/*")
    nowhere = tmp_path / "nowhere"  # the SDK starts no embedded database either
    with WebProcess(database_url, tmp_path / "web.log") as web:
        env = over_http(web.url, key, ENGINE_DATA_DIR=str(nowhere))
        with start(STEPPED, "diverges", environment=env) as proc:
            assert step(proc, "0.5") == "stored 0 False"
            assert step(proc, "2e6") == "stored 1 False"  # stored; nobody evaluated it yet
            tick(database_url)  # the trigger and its stop request, in one transaction
            (request,) = stop_requests(conn)
            assert request["automation"] == "stop-on-divergence" and request["ended_at"] is None
            # The next flush (one POST …/log) gets the request in its answer: run.flush raises,
            # and leaving the `with` block finishes the run `stopped` (POST …/finish).
            assert step(proc, "0.4") == "stopped stop-on-divergence 2 True killed"
            assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        assert "ENGINE_DATABASE_URL" not in env and not nowhere.exists()
    run = run_row(conn, "diverges")
    assert run["state"] == "killed" and run["points"] == 3  # the step logged with the stop is stored
    assert run["last_event"] == KILLED_BY_THE_RULE
    (request,) = stop_requests(conn)
    assert request["ended_at"] is not None  # the state change ended it
    (author,) = conn.execute(
        "SELECT e.author FROM events e JOIN runs r ON r.id = e.run_pk"
        " WHERE r.run_id = 'diverges' AND e.details->>'to' = 'killed'"
    ).fetchone()
    assert author == "key:trainer"  # the kill came through the server, with the trainer's key


def test_a_free_running_loop_over_http_is_stopped_by_a_running_service_and_loses_nothing(
    conn, database_url, tmp_path
):
    """engine web, engine serve and a training process that only knows the server: the
    background flush stores the diverging value, the service fires, a later flush's answer
    carries the request, the loop's next run.log raises."""
    apply_yaml(conn, STOP_RULE)
    key = make_key(conn, "trainer", "ingest", "acme/*")
    serve_log = tmp_path / "serve.log"
    with (
        WebProcess(database_url, tmp_path / "web.log") as web,
        _serving(database_url, serve_log),
        start(
            FREE_RUNNING, "free", environment=over_http(web.url, key, ENGINE_FLUSH_INTERVAL="0.05")
        ) as proc,
    ):
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err + serve_log.read_text()[-2000:]
    word, automation, last_step, state = out.split()
    assert (word, automation, state) == ("stopped", "stop-on-divergence", "killed")
    run = run_row(conn, "free")
    assert run["state"] == "killed" and run["last_event"] == KILLED_BY_THE_RULE
    assert run["points"] == int(last_step) + 1  # every logged step stored, the last one included
    assert int(last_step) > 20  # it ran past the diverging step until the request reached it
    assert wait_for(lambda: stop_requests(conn)[0]["ended_at"] is not None)


class _serving:
    """`engine serve` (the evaluator that fires the rule) for the length of a `with` block."""

    def __init__(self, database_url: str, log: Path):
        self.service = ServeProcess(database_url, log, interval=0.2)

    def __enter__(self) -> ServeProcess:
        return self.service.start()

    def __exit__(self, *exc: object) -> None:
        self.service.stop_quietly()
