"""`run.alert` over HTTP: with ENGINE_URL + ENGINE_API_KEY the alert goes through a real
`engine web` (POST .../alerts) into the same events as over the database, with the same
suppression of a repeated title, shared by both transports, and `run_alert` rules fire on it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from psycopg.rows import dict_row

import engine
from tests.acceptance.test_sdk_http import use_server
from tests.acceptance.web_helpers import WebProcess, make_key
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers
from tests.integration.sdk_helpers import set_env


def alerts_of(conn, run_id: str) -> list[tuple[str, str, str, str | None]]:
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        "SELECT e.details, e.author FROM events e JOIN runs r ON r.id = e.run_pk"
        " WHERE e.type = 'run_alert' AND r.run_id = %s ORDER BY e.id",
        (run_id,),
    ).fetchall()
    return [(r["details"]["title"], r["details"]["text"], r["details"]["level"], r["author"]) for r in rows]


def test_alerts_over_http_are_suppressed_like_over_the_database_and_fire_rules(
    conn, database_url, tmp_path, monkeypatch
):
    apply_yaml(conn, rule("nan-errors", '{type: run_alert, title_regex: "(?i)nan", levels: [error]}'))
    key = make_key(conn, "trainer", "ingest", "acme/*")
    with WebProcess(database_url, tmp_path / "web.log") as web:
        use_server(monkeypatch, web, key)
        with engine.init(project="acme/vision", id="h1", name="train") as run:
            assert run.alert("loss is NaN", "step 120", level="ERROR", wait_duration=300) is True
            # the same title within 300 s: dropped by the server, nothing written
            assert run.alert("loss is NaN", "step 121", level="error", wait_duration=300) is False
            assert run.alert("GPU hot", wait_duration=timedelta(minutes=5)) is True  # another title
            assert run.alert("loss is NaN", "no wait", level="warn", wait_duration=0) is True
            # bad arguments are refused before any request, with the database transport's messages
            with pytest.raises(ValueError, match="alert level must be one of info, warn, error"):
                run.alert("t", "", "fatal")
            with pytest.raises(ValueError, match="between 0 seconds and 7 days"):
                run.alert("t", wait_duration=-1)

        # the same run over the database: the title raised over HTTP is still within its wait
        monkeypatch.delenv("ENGINE_URL", raising=False)
        monkeypatch.delenv("ENGINE_API_KEY", raising=False)
        set_env(monkeypatch, database_url=database_url)
        with engine.init(project="acme/vision", id="h1", resume=True, user="carol") as again:
            assert again.alert("GPU hot", wait_duration=300) is False
            assert again.alert("loss is NaN", "over the database", level="error", wait_duration=0) is True

    assert alerts_of(conn, "h1") == [
        ("loss is NaN", "step 120", "error", "key:trainer"),  # the server writes the key as the author
        ("GPU hot", "", "info", "key:trainer"),
        ("loss is NaN", "no wait", "warn", "key:trainer"),
        ("loss is NaN", "over the database", "error", "carol"),
    ]
    tick(database_url)
    # error-level alerts with NaN in the title: the one over HTTP fires; the one over the database
    # falls in the run-event cooldown (24 h) of the first
    fired = triggers(conn, "nan-errors")
    assert [(t["run_id"], t["details"]["alert_title"], t["details"]["alert_text"]) for t in fired] == [
        ("h1", "loss is NaN", "step 120")
    ]
