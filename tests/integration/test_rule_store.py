"""Rule storage against the real database: apply, versions, the evaluation frontier, management."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine import automations, clock
from engine import db as enginedb
from engine.actions.dispatcher import Dispatcher
from engine.exceptions import NotFound, RuleValidationError
from engine.history import history_rows
from engine.rules import Automation, load_rules
from engine.rules.api import apply as api_apply
from engine.settings import get_settings
from tests.integration.actions_helpers import fire, settle
from tests.receiver import Receiver, Reply

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def rule(name: str = "acc", **overrides) -> Automation:
    data = {
        "name": name,
        "scope": {"project": "acme/vision"},
        "event": {"type": "run_metric_threshold", "metric": "accuracy", "operator": ">", "threshold": 0.6},
        "action": {"type": "no_op"},
    }
    data.update(overrides)
    return Automation.model_validate(data)


def frontier(conn, name: str) -> int:
    return conn.execute(
        "SELECT s.frontier::text::bigint FROM automation_state s JOIN automations a ON a.id = s.automation_id WHERE a.name = %s",
        (name,),
    ).fetchone()[0]


def burn_xids(conn, n: int = 3) -> None:
    """Commit a few transactions that take an xid, as concurrent ingest would."""
    for _ in range(n):
        conn.execute("SELECT pg_current_xact_id()")


def stored(conn, name: str) -> tuple:
    return conn.execute(
        "SELECT version, enabled, evaluate_from, rule FROM automations WHERE name = %s", (name,)
    ).fetchone()


def versions(conn, name: str) -> list[tuple[int, bool]]:
    return conn.execute(
        "SELECT v.version, v.enabled FROM automation_versions v JOIN automations a ON a.id = v.automation_id "
        "WHERE a.name = %s ORDER BY v.version",
        (name,),
    ).fetchall()


def test_apply_creates_then_is_unchanged(conn):
    with clock.frozen(T0):
        assert automations.apply_rules(conn, [rule()], source={"acc": "rules/acc.yaml"}) == [
            ("acc", "created")
        ]
    version, enabled, evaluate_from, data = stored(conn, "acc")
    assert (version, enabled, evaluate_from) == (1, True, T0)
    assert Automation.model_validate(data) == rule()
    assert versions(conn, "acc") == [(1, True)]
    before = frontier(conn, "acc")
    assert before > 0
    burn_xids(conn)
    assert automations.apply_rules(conn, [rule()]) == [("acc", "unchanged")]
    assert stored(conn, "acc")[0] == 1 and versions(conn, "acc") == [(1, True)]
    assert frontier(conn, "acc") == before
    source = conn.execute("SELECT source FROM automations WHERE name = 'acc'").fetchone()[0]
    assert source == "rules/acc.yaml"


def test_description_change_keeps_the_frontier(conn):
    with clock.frozen(T0):
        automations.apply_rules(conn, [rule()])
    start = frontier(conn, "acc")
    burn_xids(conn)
    with clock.frozen(T1):
        assert automations.apply_rules(conn, [rule(description="now with words", cooldown="1h")]) == [
            ("acc", "updated")
        ]
    version, _, evaluate_from, data = stored(conn, "acc")
    assert (version, evaluate_from, data["description"]) == (2, T0, "now with words")
    assert versions(conn, "acc") == [(1, True), (2, True)]
    assert frontier(conn, "acc") == start


def test_condition_change_restarts_evaluation(conn):
    with clock.frozen(T0):
        automations.apply_rules(conn, [rule()])
    start = frontier(conn, "acc")
    conn.execute("UPDATE automation_state SET last_error = 'boom', failures = 3")
    burn_xids(conn)
    changed = rule(
        event={"type": "run_metric_threshold", "metric": "accuracy", "operator": ">", "threshold": 0.7}
    )
    with clock.frozen(T1):
        assert automations.apply_rules(conn, [changed]) == [("acc", "updated")]
    assert frontier(conn, "acc") > start
    assert stored(conn, "acc")[2] == T1
    assert conn.execute("SELECT last_error, failures FROM automation_state").fetchone() == (None, 0)


def test_update_keeps_triggers_and_all_versions(conn):
    automations.apply_rules(conn, [rule()])
    automation_id = conn.execute("SELECT id FROM automations WHERE name = 'acc'").fetchone()[0]
    fire(conn, automation_id, [])
    automations.apply_rules(conn, [rule(run_filter={"user": "alice"})])
    automations.apply_rules(conn, [rule(run_filter={"user": "bob"})])
    assert conn.execute("SELECT count(*) FROM triggers").fetchone()[0] == 1
    assert [v for v, _ in versions(conn, "acc")] == [1, 2, 3]
    rules = conn.execute(
        "SELECT rule -> 'run_filter' ->> 'user' FROM automation_versions WHERE automation_id = %s ORDER BY version",
        (automation_id,),
    ).fetchall()
    assert rules == [(None,), ("alice",), ("bob",)]


def test_enable_moves_the_frontier_disable_does_not(conn):
    automations.apply_rules(conn, [rule()])
    start = frontier(conn, "acc")
    burn_xids(conn)
    assert automations.disable(conn, "acc") is True
    assert automations.disable(conn, "acc") is False
    version, enabled, _, data = stored(conn, "acc")
    assert (version, enabled, data["enabled"]) == (2, False, False)
    assert frontier(conn, "acc") == start
    burn_xids(conn)
    with clock.frozen(T1):
        assert automations.enable(conn, "acc") is True
    version, enabled, evaluate_from, data = stored(conn, "acc")
    assert (version, enabled, evaluate_from, data["enabled"]) == (3, True, T1, True)
    assert frontier(conn, "acc") > start
    assert versions(conn, "acc") == [(1, True), (2, False), (3, True)]


def test_applying_enabled_true_after_disabled_restarts(conn):
    automations.apply_rules(conn, [rule(enabled=False)])
    start = frontier(conn, "acc")
    burn_xids(conn)
    assert automations.apply_rules(conn, [rule()]) == [("acc", "updated")]
    assert frontier(conn, "acc") > start


def test_prune_deletes_what_is_not_applied(conn):
    automations.apply_rules(conn, [rule("a"), rule("b"), rule("c")])
    assert automations.apply_rules(conn, [rule("a")], prune=True) == [
        ("a", "unchanged"),
        ("b", "deleted"),
        ("c", "deleted"),
    ]
    assert [r.name for r in automations.list_automations(conn)] == ["a"]
    assert [s.name for s in automations.load_enabled(conn)] == ["a"]
    # kept as history: disabled, marked deleted, without evaluation state
    kept = conn.execute(
        "SELECT a.name, a.enabled, a.deleted_at IS NOT NULL, s.automation_id IS NULL FROM automations a"
        " LEFT JOIN automation_state s ON s.automation_id = a.id WHERE a.name <> 'a' ORDER BY a.name"
    ).fetchall()
    assert kept == [("b", False, True, True), ("c", False, True, True)]
    assert automations.apply_rules(conn, [rule("a"), rule("d")]) == [("a", "unchanged"), ("d", "created")]
    assert automations.apply_rules(conn, [rule("a"), rule("d")], prune=True) == [
        ("a", "unchanged"),
        ("d", "unchanged"),
    ]


def fake_firing(conn, name: str, cause: str = "x") -> int:
    """A trigger whose one webhook delivery failed at its only attempt with a 500, written by
    the evaluator's and the dispatcher's own code."""
    automation_id = conn.execute(
        "SELECT id FROM automations WHERE name = %s AND deleted_at IS NULL", (name,)
    ).fetchone()[0]
    with Receiver(Reply(500)) as rx:
        action = {"type": "webhook", "url": rx.url(), "max_attempts": 1}
        trigger_id, ids = fire(conn, automation_id, [action], cause=cause)
        with Dispatcher(enginedb.database_url(get_settings()), get_settings()) as dispatcher:
            settle(dispatcher, conn, ids)
    return trigger_id


def audit(conn) -> list[tuple]:
    """Everything the history is made of, as rows."""
    return conn.execute(
        "SELECT h.trigger_id, h.automation, h.delivery_status, h.attempts, h.last_http_status,"
        "       (SELECT count(*) FROM delivery_attempts da JOIN deliveries d ON d.id = da.delivery_id"
        "        WHERE d.trigger_id = h.trigger_id),"
        "       (SELECT count(*) FROM automation_versions v JOIN triggers t ON t.automation_id = v.automation_id"
        "        WHERE t.id = h.trigger_id)"
        " FROM automation_history h ORDER BY h.trigger_id"
    ).fetchall()


@pytest.mark.parametrize("how", ["delete", "prune"])
def test_deleting_keeps_the_history_under_the_name_it_had(conn, how):
    automations.apply_rules(conn, [rule("acc"), rule("other")])
    automations.apply_rules(conn, [rule("acc", description="second version"), rule("other")])
    fired = [fake_firing(conn, "acc", "one"), fake_firing(conn, "acc", "two"), fake_firing(conn, "other")]
    before = audit(conn)
    assert [row[1] for row in before] == ["acc", "acc", "other"]
    assert all(row[2:] == ("failed", 1, 500, 1, 2) for row in before[:2])

    with clock.frozen(T1):
        if how == "delete":
            automations.delete(conn, "acc")
        else:
            assert automations.apply_rules(conn, [rule("other")], prune=True) == [
                ("other", "unchanged"),
                ("acc", "deleted"),
            ]
    assert audit(conn) == before
    deleted_at = conn.execute(
        "SELECT DISTINCT automation_deleted_at FROM automation_history WHERE automation = 'acc'"
    ).fetchall()
    assert deleted_at == [(T1,)]
    assert conn.execute(
        "SELECT automation_deleted_at FROM automation_history WHERE automation = 'other'"
    ).fetchone() == (None,)

    # `engine history --automation acc` still finds it; `rules show acc` says where it went
    history = history_rows(conn, automation="acc", limit=10)
    assert sorted(r["trigger_id"] for r in history) == fired[:2]
    with pytest.raises(
        NotFound,
        match=r"no automation named 'acc': it was deleted on 2024-05-02 12:00 UTC "
        r"\(its history: engine history --automation acc\)",
    ):
        automations.get(conn, "acc")
    with pytest.raises(NotFound, match="it was deleted on"):
        automations.delete(conn, "acc")

    # The name is free again; the new automation's history is its own.
    assert automations.apply_rules(conn, [rule("acc"), rule("other")]) == [
        ("acc", "created"),
        ("other", "unchanged"),
    ]
    assert {r.name: r.triggers for r in automations.list_automations(conn)} == {"acc": 0, "other": 1}
    new = fake_firing(conn, "acc", "one")  # the same cause: a different automation
    rows = conn.execute(
        "SELECT trigger_id, automation_deleted_at IS NULL FROM automation_history WHERE automation = 'acc' ORDER BY trigger_id"
    ).fetchall()
    assert rows == [(fired[0], False), (fired[1], False), (new, True)]


def test_an_automation_deleted_by_hand_is_refused(conn):
    import psycopg

    automations.apply_rules(conn, [rule("acc")])
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("DELETE FROM automations WHERE name = 'acc'")


def row_counts(conn) -> dict[str, int]:
    """Rows of every table of the schema, and where every sequence stands."""
    from psycopg import sql

    tables = [
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
    ]
    counts = {
        t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
        for t in tables
    }
    sequences = conn.execute(
        "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'"
    ).fetchall()
    return counts | {f"sequence {name}": value for name, value in sequences}


def test_dry_run_says_what_apply_would_do_and_changes_nothing(conn):
    automations.apply_rules(conn, [rule("keep"), rule("edit"), rule("gone")])
    fake_firing(conn, "gone")
    snapshot = row_counts(conn)
    rows = conn.execute("SELECT * FROM automations ORDER BY id").fetchall()
    assert {"automations", "triggers", "deliveries", "automation_versions", "metric_points"} <= set(snapshot)

    wanted = [rule("keep"), rule("edit", description="changed"), rule("new")]
    expected = [("keep", "unchanged"), ("edit", "updated"), ("new", "created"), ("gone", "deleted")]
    assert automations.apply_rules(conn, wanted, prune=True, dry_run=True) == expected
    assert automations.apply_rules(conn, wanted, dry_run=True) == expected[:3]
    assert row_counts(conn) == snapshot
    assert conn.execute("SELECT * FROM automations ORDER BY id").fetchall() == rows

    assert automations.apply_rules(conn, wanted, prune=True) == expected
    assert row_counts(conn) != snapshot


def test_dry_run_refuses_what_apply_refuses(conn):
    bad = rule("bad", event={"type": "artifact_alias_added", "alias_regex": "[[.ab.]]"})
    with pytest.raises(RuleValidationError, match="PostgreSQL refuses this regex"):
        automations.apply_rules(conn, [bad], dry_run=True)


def test_delete_and_not_found(conn):
    automations.apply_rules(conn, [rule("accuracy-above-0.6"), rule("loss-down")])
    automations.delete(conn, "loss-down")
    assert [r.name for r in automations.list_automations(conn)] == ["accuracy-above-0.6"]
    with pytest.raises(
        NotFound, match=r"no automation named 'accuracy-above-0.7'; did you mean 'accuracy-above-0.6'\?"
    ):
        automations.get(conn, "accuracy-above-0.7")
    for action in (automations.delete, automations.enable, automations.disable):
        with pytest.raises(NotFound, match=r"no automation named 'zzz'$"):
            action(conn, "zzz")


def test_get_list_and_load_enabled(conn):
    automations.apply_rules(
        conn,
        [
            rule("acc"),
            rule("off", enabled=False),
            rule(
                "link",
                scope={"registry": "model", "collection": "resnet"},
                event={"type": "registry_version_linked"},
            ),
        ],
    )
    conn.execute(
        "UPDATE automation_state SET last_error = 'compile failed' WHERE automation_id = (SELECT id FROM automations WHERE name = 'acc')"
    )
    rows = {r.name: r for r in automations.list_automations(conn)}
    assert (rows["acc"].enabled, rows["acc"].version, rows["acc"].rule_type, rows["acc"].scope) == (
        True, 1, "run_metric_threshold", "acme/vision",
    )  # fmt: skip
    assert rows["acc"].last_error == "compile failed" and rows["acc"].triggers == 0
    assert rows["link"].scope == "registry:model/resnet"
    assert rows["off"].enabled is False

    got = automations.get(conn, "acc")
    assert got.automation == rule("acc") and got.version == 1 and got.state is not None
    assert got.state.last_error == "compile failed" and int(got.state.frontier) == frontier(conn, "acc")

    enabled = automations.load_enabled(conn)
    assert sorted(s.name for s in enabled) == ["acc", "link"]
    assert all(isinstance(s.automation, Automation) and s.id > 0 for s in enabled)


def test_regex_refused_by_postgres_writes_nothing(conn):
    # A named collating element Python's check lets through, which PostgreSQL does not know.
    bad = rule("bad", event={"type": "artifact_alias_added", "alias_regex": "[[.ab.]]"})
    with pytest.raises(RuleValidationError) as exc:
        automations.apply_rules(conn, [rule("good"), bad], source={"bad": "rules/bad.yaml"})
    assert [str(i) for i in exc.value.issues] == [
        "rules/bad.yaml: event.alias_regex: PostgreSQL refuses this regex: invalid regular expression: invalid collating element"
    ]
    assert conn.execute("SELECT count(*) FROM automations").fetchone()[0] == 0


def test_loader_with_a_connection_reports_the_postgres_error_with_its_line(conn, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nscope: {project: acme/vision}\nevent:\n  type: artifact_tag_added\n  tag_regex: '[[=xy=]]'\naction: {type: no_op}\n"
    )
    assert load_rules([path])  # fine without the database
    with pytest.raises(RuleValidationError) as exc:
        load_rules([path], conn)
    assert [str(i) for i in exc.value.issues] == [
        f"{path}:5: event.tag_regex: PostgreSQL refuses this regex: invalid regular expression: invalid collating element"
    ]


def test_duplicate_names_in_one_apply_are_refused(conn):
    with pytest.raises(RuleValidationError, match="duplicate automation name 'a'"):
        automations.apply_rules(conn, [rule("a"), rule("a", description="x")])


def test_injection_looking_values_are_stored_literally(conn):
    nasty = "x'); DROP TABLE runs; --"
    automation = rule(
        "nasty",
        event={"type": "run_metric_threshold", "metric": nasty, "operator": ">", "threshold": 1},
        run_filter={"user": nasty, "name_regex": "'; DROP TABLE runs; --"},
    )
    automations.apply_rules(conn, [automation])
    assert automations.get(conn, "nasty").automation == automation
    assert conn.execute("SELECT to_regclass('runs') IS NOT NULL").fetchone()[0]


def test_python_api_apply(database_url):
    results = api_apply(
        rule("from-python"),
        "name: from-yaml\nscope: {project: acme/vision}\nevent: {type: run_state, states: [failed]}\naction: {type: no_op}\n",
    )
    assert results == [("from-python", "created"), ("from-yaml", "created")]
    assert api_apply(rule("from-python"), prune=True, dry_run=True) == [
        ("from-python", "unchanged"),
        ("from-yaml", "deleted"),
    ]
    assert api_apply(rule("from-python"), prune=True) == [
        ("from-python", "unchanged"),
        ("from-yaml", "deleted"),
    ]
    assert api_apply(rule("from-python"), prune=True) == [("from-python", "unchanged")]


def test_every_query_the_rules_use_exists():
    import re
    from pathlib import Path

    from engine.db import query_names

    used = set()
    for path in [
        Path(automations.__file__),
        *Path(automations.__file__).parent.joinpath("rules").glob("*.py"),
    ]:
        used |= set(re.findall(r'query\("(\w+)"\)', path.read_text()))
    assert used and used <= query_names()


def test_a_deleted_automation_stops_firing_and_its_pending_deliveries_are_sent(
    conn, database_url, monkeypatch
):
    """SDK -> evaluator -> delete -> dispatcher: what fired before the delete still arrives."""
    from evaluation_helpers import tick, triggers

    import engine
    from engine.rules import parse_rules_text
    from engine.settings import Settings

    settings = Settings(database_url=database_url, webhook_allow_hosts="127.0.0.1", retry_base_seconds=0.05)
    with Receiver(Reply(200)) as rx, Dispatcher(database_url, settings) as dispatcher:
        text = (
            "name: acc\nscope: {project: acme/vision}\n"
            'event: {type: run_metric_threshold, metric: accuracy, window: 1, operator: ">", threshold: 0.6}\n'
            f"action: {{type: webhook, url: {rx.url()}}}\n"
        )
        automations.apply_rules(conn, [r.automation for r in parse_rules_text(text)])
        run = engine.init(project="acme/vision", name="r", system_metrics_interval=0)
        run.log({"accuracy": 0.7}, step=0)
        run.flush()
        tick(database_url)
        (first,) = triggers(conn, "acc")
        assert conn.execute("SELECT status FROM deliveries").fetchall() == [("pending",)]

        automations.delete(conn, "acc")
        # Another run (no cooldown between runs) logs after the delete: never evaluated.
        later = engine.init(project="acme/vision", name="later", system_metrics_interval=0)
        later.log({"accuracy": 0.9}, step=0)
        later.flush()
        tick(database_url)
        settle(dispatcher, conn, [r[0] for r in conn.execute("SELECT id FROM deliveries")])
        run.finish()
        later.finish()

    assert [t["id"] for t in triggers(conn)] == [first["id"]]
    assert [r.json()["automation_name"] for r in rx.requests] == ["acc"]
    row = conn.execute(
        "SELECT automation, delivery_status, attempts, automation_deleted_at IS NOT NULL FROM automation_history"
    ).fetchall()
    assert row == [("acc", "succeeded", 1, True)]
