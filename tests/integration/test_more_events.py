"""The events added after part one, end to end against the database: alerts from training
code (with W&B's suppression of a repeated title), tag removal, unlinking, collection tags,
and the entity scope (every project of an entity, one created after the rule included).
Each change and its event commit together; each event fires once, never retroactively."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from psycopg.rows import dict_row

import engine
from engine import clock
from engine.actions.context import build_context
from engine.evaluation.backtest import backtest
from engine.exceptions import NotFound
from engine.explain.data import explain_data
from engine.explain.text import lines
from engine.rules import parse_rules_text
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def events(conn, kind: str) -> list[dict]:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute("SELECT * FROM events WHERE type = %s ORDER BY id", (kind,)).fetchall()


def automation(text: str):
    return parse_rules_text(text)[0].automation


# -- run.alert ---------------------------------------------------------------------------------
def test_alert_repeated_title_is_dropped_within_wait_duration(conn, database_url):
    apply_yaml(conn, rule("alerts", "{type: run_alert}", extra="cooldown: 1m\n"))
    with clock.frozen(T0):
        run = engine.init(project="acme/vision", name="train", system_metrics_interval=0)
    with clock.frozen(T0 + timedelta(seconds=1)):
        assert run.alert("loss is NaN", "step 120", level="ERROR", wait_duration=300) is True
    with clock.frozen(T0 + timedelta(seconds=200)):  # same title within 300 s: dropped
        assert run.alert("loss is NaN", "step 121", level="error", wait_duration=300) is False
        assert run.alert("GPU hot", wait_duration=300) is True  # another title: sent
    with clock.frozen(T0 + timedelta(seconds=301)):  # 300 s after the one that was sent
        assert run.alert("loss is NaN", "step 300", level="warn", wait_duration=timedelta(minutes=5)) is True
    with clock.frozen(T0 + timedelta(seconds=302)):
        assert run.alert("loss is NaN", wait_duration=0) is True  # no wait: never dropped
    run.finish()
    stored = [
        (e["details"]["title"], e["details"]["text"], e["details"]["level"])
        for e in events(conn, "run_alert")
    ]
    assert stored == [
        ("loss is NaN", "step 120", "error"),
        ("GPU hot", "", "info"),
        ("loss is NaN", "step 300", "warn"),
        ("loss is NaN", "", "info"),
    ]
    tick(database_url)
    # the run-event cooldown (1m, on the events' own time): 1 s, 200 s, 301 s fire; 302 s is within it
    fired = triggers(conn, "alerts")
    assert [t["details"]["alert_title"] for t in fired] == ["loss is NaN", "GPU hot", "loss is NaN"]
    ctx = build_context(conn, fired[0]["id"])
    assert (ctx["event_type"], ctx["alert_title"], ctx["alert_text"], ctx["alert_level"]) == (
        "RUN_ALERT", "loss is NaN", "step 120", "error",
    )  # fmt: skip
    assert ctx["run_name"] == "train" and ctx["entity_name"] == "acme"
    tick(database_url)
    assert len(triggers(conn, "alerts")) == 3  # exactly once
    assert "alert: loss is NaN (error): step 120" in lines(explain_data(conn, fired[0]["id"]))


def test_alert_rules_filter_title_and_level_and_are_never_retroactive(conn, database_url):
    with engine.init(project="acme/vision", name="before", system_metrics_interval=0) as run:
        run.alert("loss is NaN", level="error")  # before the rule exists: never fires
    apply_yaml(
        conn,
        rule(
            "nan-errors", '{type: run_alert, title_regex: "(?i)nan", levels: [ERROR]}', extra="cooldown: 1m\n"
        ),
    )
    with engine.init(project="acme/vision", name="after", system_metrics_interval=0) as run:
        run.alert("Loss is NaN", level="error")
        run.alert("NaN again", level="warn")  # wrong level
        run.alert("GPU hot", level="error")  # wrong title
    with engine.init(project="acme/other", name="elsewhere", system_metrics_interval=0) as run:
        run.alert("loss is NaN", level="error")  # another project
    tick(database_url)
    fired = triggers(conn, "nan-errors")
    assert [(t["run_id"] is not None, t["details"]["alert_title"]) for t in fired] == [(True, "Loss is NaN")]
    # the backtest answers from the stored events (here including the one before the rule)
    since = T0 - timedelta(days=3650)
    found = backtest(
        conn,
        automation(
            rule(
                "nan-errors",
                '{type: run_alert, title_regex: "(?i)nan", levels: [error]}',
                extra="cooldown: 1m\n",
            )
        ),
        since,
    )
    assert sorted(f.details["alert_title"] for f in found) == ["Loss is NaN", "loss is NaN"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("",), "alert title must be 1-256 characters"),
        (("t", "", "fatal"), "alert level must be one of info, warn, error"),
        (("t", "", "info", -1), "alert wait_duration must be between 0 seconds and 7 days"),
        (("t", 5), "alert text must be a string"),
    ],
)
def test_alert_arguments_are_checked_before_anything_is_written(conn, args, error):
    with engine.init(project="acme/vision", name="bad", system_metrics_interval=0) as run:
        with pytest.raises((TypeError, ValueError), match=error):
            run.alert(*args)
    assert events(conn, "run_alert") == []


# -- artifact_tag_removed ------------------------------------------------------------------------
def test_tag_removal_fires_in_project_and_entity_scopes(conn, database_url):
    api = engine.Api(user="alice")
    with engine.init(project="acme/vision", name="data", system_metrics_interval=0) as run:
        early = run.log_artifact("mnist", type="dataset", tags=["europe-west"])
    api.remove_tag(early, "europe-west")  # before the rules: never fires
    apply_yaml(conn, rule("eu-gone", '{type: artifact_tag_removed, tag_regex: "^europe"}'))
    apply_yaml(
        conn,
        rule("eu-gone-mnist", '{type: artifact_tag_removed, tag_regex: "^europe"}',
             scope="{entity: acme, collection: mnist}"),
    )  # fmt: skip
    with engine.init(project="acme/vision", name="data", system_metrics_interval=0) as run:
        v = run.log_artifact("mnist", type="dataset", tags=["europe-west", "asia"])
        other = run.log_artifact("cifar", type="dataset", tags=["europe-north"])
    assert api.remove_tag(v, "europe-west") is True
    assert api.remove_tag(v, "europe-west") is False  # not there any more: no event
    assert api.remove_tag(v, "asia") is True  # does not match
    assert api.remove_tag(other, "europe-north") is True  # another collection
    removed = events(conn, "artifact_tag_removed")
    assert [(e["details"]["tag"], e["author"]) for e in removed] == [
        ("europe-west", "alice"), ("europe-west", "alice"), ("asia", "alice"), ("europe-north", "alice"),
    ]  # fmt: skip
    assert (
        conn.execute("SELECT count(*) FROM artifact_tags WHERE version_id = %s", (v.id,)).fetchone()[0] == 0
    )
    tick(database_url)
    assert [(t["tag"], t["artifact_version_id"]) for t in triggers(conn, "eu-gone")] == [
        ("europe-west", v.id), ("europe-north", other.id),
    ]  # fmt: skip
    assert [t["artifact_version_id"] for t in triggers(conn, "eu-gone-mnist")] == [v.id]
    ctx = build_context(conn, triggers(conn, "eu-gone")[0]["id"])
    assert (ctx["event_type"], ctx["tag"], ctx["artifact_version_string"]) == (
        "REMOVE_ARTIFACT_TAG", "europe-west", "acme/vision/mnist:v1",
    )  # fmt: skip


# -- artifact_unlinked ---------------------------------------------------------------------------
def test_unlink_in_registry_scopes_with_alias_regex_and_latest_moving_back(conn, database_url):
    apply_yaml(conn, rule("any-unlink", "{type: artifact_unlinked}", scope="{registry: model}"))
    apply_yaml(
        conn,
        rule("prod-unlink", '{type: artifact_unlinked, alias_regex: "^production$"}',
             scope="{registry: model, collection: resnet}"),
    )  # fmt: skip
    api = engine.Api(user="bob")
    with engine.init(project="acme/vision", name="train", system_metrics_interval=0) as run:
        a = run.log_artifact("resnet-50", type="model")
        b = run.log_artifact("resnet-50", type="model")
    link_a = api.link_artifact(a, registry="model", collection="resnet", aliases=["production"])
    link_b = api.link_artifact(b, registry="model", collection="resnet")  # latest moves to b
    api.link_artifact(b, registry="model", collection="vgg")
    assert api.unlink_artifact(link_a) is True  # held production
    assert api.unlink_artifact(link_a) is False  # not linked any more
    assert api.unlink_artifact(b, registry="model", collection="resnet") is True  # held latest
    assert api.unlink_artifact(b, registry="model", collection="vgg") is True  # latest, but in vgg
    with pytest.raises(ValueError, match="registry= and collection="):
        api.unlink_artifact(b)
    unlinked = events(conn, "artifact_unlinked")
    assert [(e["link_id"], e["details"]["aliases"]) for e in unlinked[:2]] == [
        (link_a.id, ["production"]), (link_b.id, ["latest"]),
    ]  # fmt: skip
    # the links stay (marked), so their link events and what they fired keep pointing at them
    assert (
        conn.execute("SELECT count(*) FROM registry_links WHERE unlinked_at IS NOT NULL").fetchone()[0] == 3
    )
    assert (
        conn.execute("SELECT count(*) FROM events WHERE type = 'registry_version_linked'").fetchone()[0] == 3
    )
    again = api.link_artifact(a, registry="model", collection="resnet")  # a new link, the next index
    assert (again.id != link_a.id, again.version_index) == (True, 2)
    latest = conn.execute(
        "SELECT a.link_id FROM registry_aliases a JOIN registry_collections rc ON rc.id = a.registry_collection_id "
        "WHERE rc.name = 'resnet' AND a.alias = 'latest'"
    ).fetchone()
    assert latest == (again.id,)
    tick(database_url)
    assert [t["event_id"] for t in triggers(conn, "any-unlink")] == [e["id"] for e in unlinked]
    assert [t["event_id"] for t in triggers(conn, "prod-unlink")] == [unlinked[0]["id"]]
    ctx = build_context(conn, triggers(conn, "prod-unlink")[0]["id"])
    assert (ctx["event_type"], ctx["registry_name"], ctx["artifact_version_string"]) == (
        "UNLINK_ARTIFACT", "model", "model/resnet:v0",
    )  # fmt: skip


# -- collection tags -------------------------------------------------------------------------------
def test_collection_tags_in_project_entity_and_registry_scopes(conn, database_url):
    apply_yaml(conn, rule("golden", '{type: collection_tag_added, tag_regex: "^golden$"}'))
    apply_yaml(
        conn,
        rule("golden-acme", '{type: collection_tag_added, tag_regex: "^golden$"}', scope="{entity: acme}"),
    )
    apply_yaml(
        conn,
        rule("registry-untagged", "{type: collection_tag_removed, tag_regex: .}",
             scope="{registry: model, collection: resnet}"),
    )  # fmt: skip
    api = engine.Api(user="carol")
    with engine.init(project="acme/vision", name="data", system_metrics_interval=0) as run:
        v = run.log_artifact("mnist", type="dataset")
        api.link_artifact(v, registry="model", collection="resnet")
    with engine.init(project="acme/audio", name="data", system_metrics_interval=0) as run:
        run.log_artifact("speech", type="dataset")
    with engine.init(project="other/vision", name="data", system_metrics_interval=0) as run:
        run.log_artifact("mnist", type="dataset")
    assert api.add_collection_tag("acme/vision/mnist", "golden") is True
    assert api.add_collection_tag("acme/vision/mnist", "golden") is False  # had it: no event
    api.add_collection_tag("acme/audio/speech", "golden")
    api.add_collection_tag("other/vision/mnist", "golden")  # another entity
    api.add_tag(v, "golden")  # a version's tag, not the collection's
    api.add_collection_tag("resnet", "vision", registry="model")
    assert api.remove_collection_tag("resnet", "vision", registry="model") is True
    assert api.remove_collection_tag("resnet", "vision", registry="model") is False
    assert api.remove_collection_tag("acme/vision/mnist", "golden") is True
    with pytest.raises(NotFound):
        api.add_collection_tag("acme/vision/nothing", "golden")
    assert conn.execute("SELECT count(*) FROM artifact_collection_tags").fetchone()[0] == 2
    tick(database_url)
    assert [t["tag"] for t in triggers(conn, "golden")] == ["golden"]
    assert len(triggers(conn, "golden-acme")) == 2  # vision and audio, not other/
    untagged = triggers(conn, "registry-untagged")
    assert [t["tag"] for t in untagged] == ["vision"]
    ctx = build_context(conn, untagged[0]["id"])
    assert (ctx["event_type"], ctx["artifact_collection_name"], ctx["registry_name"]) == (
        "REMOVE_COLLECTION_TAG", "resnet", "model",
    )  # fmt: skip
    history = conn.execute(
        "SELECT event_type, entity, project, tag FROM automation_history WHERE automation = 'golden'"
    ).fetchall()
    assert history == [("ADD_COLLECTION_TAG", "acme", "vision", "golden")]
    ctx = build_context(conn, triggers(conn, "golden")[0]["id"])
    assert (ctx["artifact_collection_name"], ctx["entity_name"], ctx["project_name"]) == (
        "mnist",
        "acme",
        "vision",
    )


# -- the entity scope over a project created after the rule ---------------------------------------
def test_entity_scope_covers_a_project_created_after_the_rule(conn, database_url):
    apply_yaml(conn, rule("any-alert", "{type: run_alert}", scope="{entity: acme}"))
    apply_yaml(conn, rule("failed", "{type: run_state, states: [failed]}", scope="{entity: acme}"))
    apply_yaml(
        conn,
        rule("loss-high", "{type: run_metric_threshold, metric: loss, window: 1, operator: '>', threshold: 5}",
             scope="{entity: acme}"),
    )  # fmt: skip
    apply_yaml(conn, rule("new-dataset", "{type: artifact_version_created}", scope="{entity: acme}"))
    assert conn.execute("SELECT count(*) FROM projects").fetchone()[0] == 0  # no project yet
    with engine.init(project="acme/brand-new", name="late", system_metrics_interval=0) as run:
        run.log({"loss": 9.0})
        run.alert("hello")
        run.log_artifact("speech", type="dataset")
        run.finish(1)
    with engine.init(project="other/brand-new", name="foreign", system_metrics_interval=0) as run:
        run.log({"loss": 9.0})
        run.alert("hello")
        run.log_artifact("speech", type="dataset")
        run.finish(1)
    tick(database_url)
    for name in ("any-alert", "failed", "loss-high", "new-dataset"):
        fired = triggers(conn, name)
        assert len(fired) == 1, name
    assert {t["run_id"] for t in triggers(conn) if t["run_pk"] is not None} == {
        conn.execute(
            "SELECT run_id FROM runs r JOIN projects p ON p.id = r.project_id WHERE p.entity = 'acme'"
        ).fetchone()[0]
    }
