"""Artifact and registry event rules end to end (SPEC "Artifact and registry event semantics"):
each matching event fires once for every automation that matches it, no cooldown."""

from __future__ import annotations

import engine
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers


def _fired(conn, name):
    return [(t["alias"], t["tag"]) for t in triggers(conn, name)]


def test_alias_rules_follow_latest_and_alias_moves(conn, database_url):
    apply_yaml(
        conn,
        rule(
            "latest-dataset",
            '{type: artifact_alias_added, alias_regex: "^latest$"}',
            scope="{project: acme/vision, collection: mnist}",
        ),
    )
    apply_yaml(conn, rule("production", '{type: artifact_alias_added, alias_regex: "^production$"}'))
    api = engine.Api()
    with engine.init(project="acme/vision", name="data", system_metrics_interval=0) as run:
        v0 = run.log_artifact("mnist", type="dataset", metadata={"rows": 1})
        v1 = run.log_artifact("mnist", type="dataset", metadata={"rows": 2})
        other = run.log_artifact("cifar", type="dataset")
        api.add_alias(v0, "production")
        api.add_alias(v1, "production")  # moves from v0 to v1: a new "alias added" event
    tick(database_url)
    latest = triggers(conn, "latest-dataset")
    assert [t["artifact_version_id"] for t in latest] == [v0.id, v1.id]  # not cifar (other collection)
    production = triggers(conn, "production")
    assert [t["artifact_version_id"] for t in production] == [v0.id, v1.id]
    assert other.id not in {t["artifact_version_id"] for t in latest}


def test_tag_regex_and_collection_created_after_the_automation(conn, database_url):
    apply_yaml(conn, rule("europe", '{type: artifact_tag_added, tag_regex: "^europe"}'))
    apply_yaml(
        conn,
        rule(
            "new-model",
            "{type: artifact_version_created, collection_type: model}",
            scope='{project: acme/vision, collection_regex: "^res"}',
        ),
    )
    with engine.init(project="acme/vision", name="train", system_metrics_interval=0) as run:
        m = run.log_artifact("resnet", type="model", tags=["europe-west", "asia"])
        run.log_artifact("resnet-data", type="dataset")  # matches the regex but not the type
        run.log_artifact("vgg", type="model")  # the type but not the regex
    engine.Api().add_tag(m, "europe-north")
    tick(database_url)
    assert sorted(t["tag"] for t in triggers(conn, "europe")) == ["europe-north", "europe-west"]
    assert [t["artifact_version_id"] for t in triggers(conn, "new-model")] == [m.id]


def test_registry_links_in_registry_and_registry_collection_scopes(conn, database_url):
    apply_yaml(conn, rule("any-model-link", "{type: registry_version_linked}", scope="{registry: model}"))
    apply_yaml(
        conn,
        rule(
            "resnet-prod-link",
            '{type: registry_version_linked, alias_regex: "^prod"}',
            scope="{registry: model, collection: resnet}",
        ),
    )
    apply_yaml(
        conn,
        rule(
            "registry-staging",
            '{type: artifact_alias_added, alias_regex: "^staging$"}',
            scope="{registry: model}",
        ),
    )
    api = engine.Api()
    with engine.init(project="acme/vision", name="train", system_metrics_interval=0) as run:
        a = run.log_artifact("resnet-50", type="model")
        b = run.log_artifact("resnet-50", type="model")
    link_a = api.link_artifact(a, registry="model", collection="resnet")
    api.link_artifact(b, registry="model", collection="resnet", aliases=["production"])
    api.link_artifact(a, registry="model", collection="vgg")
    api.link_artifact(b, registry="datasets", collection="resnet")  # another registry: never
    api.add_alias(link_a, "staging")
    tick(database_url)
    assert len(triggers(conn, "any-model-link")) == 3
    assert [t["artifact_version_id"] for t in triggers(conn, "resnet-prod-link")] == [b.id]
    assert _fired(conn, "registry-staging") == [("staging", None)]


def test_several_automations_fire_on_one_event_and_killed_never(conn, database_url):
    apply_yaml(conn, rule("a1", '{type: artifact_alias_added, alias_regex: "."}'))
    apply_yaml(conn, rule("a2", '{type: artifact_alias_added, alias_regex: "^lat"}'))
    apply_yaml(
        conn, rule("states", "{type: run_state, states: [running, finished, failed]}", extra="cooldown: 1m\n")
    )
    with engine.init(project="acme/vision", name="x", system_metrics_interval=0) as run:
        run.log_artifact("d", type="dataset")
    victim = engine.init(project="acme/vision", name="victim", system_metrics_interval=0)
    engine.Api().kill_run("acme/vision", victim.id)
    victim.finish()  # the job itself ends after the kill: the run stays killed
    tick(database_url)
    assert len(triggers(conn, "a1")) == len(triggers(conn, "a2")) == 1
    to_states = [t["details"]["to"] for t in triggers(conn, "states")]
    assert "killed" not in to_states and to_states.count("running") == 2
