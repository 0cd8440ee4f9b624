"""stop_run over HTTP: `engine web`'s log route tells the client that an automation asked its
run to stop (`stop_requested`), GET run shows it, and finishing with `stopped` ends the run
`killed` naming the automation."""

from __future__ import annotations

from tests.acceptance.web_helpers import WebProcess, make_key
from tests.integration.evaluation_helpers import apply_yaml, tick

RUN = "/api/v1/runs/acme/vision/r1"
STOP_RULE = """\
name: stop-on-divergence
scope: {project: acme/vision}
event: {type: run_metric_threshold, metric: loss, window: 1, operator: ">", threshold: 1000000}
action: {type: stop_run}
"""


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
    assert details == {
        "from": "running",
        "to": "killed",
        "exit_code": None,
        "stopped_by": "stop-on-divergence",
    }
