"""`automation_history.event_type` is the W&B name (`${event_type}`), `rule_type` the rule's kind.

The rule package defines the W&B names (each event class's `wandb_name`); the view's SQL
function `wandb_event_type` must give the same name for every kind.
"""

from __future__ import annotations

from evaluation_helpers import apply_yaml, rule, tick

import engine
from engine.rules.events import EVENT_CLASSES, EVENT_TYPES


def test_the_sql_function_names_every_kind_as_the_rule_package_does(conn):
    expected = {kind: cls.wandb_name for kind, cls in zip(EVENT_TYPES, EVENT_CLASSES, strict=True)}
    got = dict(
        conn.execute(
            "SELECT kind, wandb_event_type(kind) FROM unnest(%s::text[]) AS kind", (list(expected),)
        ).fetchall()
    )
    assert got == expected
    assert len(set(got.values())) == len(got)  # no two kinds share a name


def test_history_rows_carry_both_names(conn, database_url):
    apply_yaml(conn, rule("failed", "{type: run_state, states: [failed]}"))
    run = engine.init(project="acme/vision", name="r", system_metrics_interval=0)
    run.log({"loss": 1.0}, step=0)
    run.finish(exit_code=1)
    tick(database_url)
    rows = conn.execute("SELECT automation, event_type, rule_type FROM automation_history").fetchall()
    assert rows == [("failed", "RUN_STATE", "run_state")]
