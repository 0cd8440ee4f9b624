"""The HTTP routes of the newer events over real HTTP: `run.alert` (ingest role, a repeated
title dropped within wait_duration), tag removal writing its event, unlinking, collection
tags, and an entity-scoped automation covered by an `entity/*` key."""

from __future__ import annotations

import pytest

from tests.acceptance.web_helpers import WebProcess, make_key
from tests.integration.evaluation_helpers import apply_yaml, rule, tick, triggers

RUN = "/api/v1/runs/acme/vision/r1"
VERSION = "/api/v1/artifacts/acme/vision/resnet/v0"


def kinds(conn) -> list[tuple]:
    return conn.execute(
        "SELECT type, author, details ->> 'title', details ->> 'tag' FROM events "
        "WHERE type NOT IN ('run_state', 'artifact_version_created', 'artifact_alias_added') ORDER BY id"
    ).fetchall()


@pytest.mark.slow
def test_alerts_over_http_are_dropped_within_wait_duration_and_fire(conn, database_url, tmp_path):
    apply_yaml(
        conn,
        rule("alerts", "{type: run_alert, levels: [error]}", scope="{entity: acme}", extra="cooldown: 1m\n"),
    )
    trainer = make_key(conn, "trainer", "ingest", "acme/vision")
    reader = make_key(conn, "reader", "read", "acme/*")
    outsider = make_key(conn, "outsider", "ingest", "other/*")
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client(trainer) as http:
        assert http.post("/api/v1/runs", json={"project": "acme/vision", "id": "r1"}).status_code == 201
        alert = {"title": "loss is NaN", "text": "step 7", "level": "ERROR", "wait_duration": 3600}
        assert http.post(RUN + "/alerts", json=alert).json() == {"sent": True}
        # the same title within the hour: dropped, nothing written
        assert http.post(RUN + "/alerts", json=alert | {"text": "step 8"}).json() == {"sent": False}
        assert http.post(RUN + "/alerts", json={"title": "GPU hot"}).json() == {"sent": True}
        bad = http.post(RUN + "/alerts", json={"title": "x", "level": "fatal"})
        assert bad.status_code == 422 and "level" in bad.text
        empty = http.post(RUN + "/alerts", json={"title": ""})
        assert empty.status_code == 422 and "title" in empty.text
        assert http.post("/api/v1/runs/acme/vision/nope/alerts", json={"title": "x"}).status_code == 404
        with web.client(reader) as r, web.client(outsider) as o:
            assert r.post(RUN + "/alerts", json={"title": "x"}).status_code == 403  # needs ingest
            assert o.post(RUN + "/alerts", json={"title": "x"}).status_code == 403  # not its project
    assert kinds(conn) == [
        ("run_alert", "key:trainer", "loss is NaN", None),
        ("run_alert", "key:trainer", "GPU hot", None),
    ]
    tick(database_url)
    assert [t["details"]["alert_title"] for t in triggers(conn, "alerts")] == ["loss is NaN"]  # info filtered


@pytest.mark.slow
def test_tag_removal_unlink_and_collection_tags_over_http(conn, database_url, tmp_path):
    trainer = make_key(conn, "trainer", "ingest", "acme/vision", "registry:model")
    admin = make_key(conn, "ci", "admin", "acme/*")
    narrow = make_key(conn, "narrow", "ingest", "acme/vision")
    vision_reader = make_key(conn, "vision-reader", "read", "acme/vision")
    with WebProcess(database_url, tmp_path / "web.log") as web, web.client(trainer) as http:
        assert http.post("/api/v1/runs", json={"project": "acme/vision", "id": "r1"}).status_code == 201
        made = http.post(RUN + "/artifacts", json={"name": "resnet", "type": "model", "tags": ["europe"]})
        assert made.status_code == 201, made.text
        assert http.delete(VERSION + "/tags/europe").json() == {"changed": True}
        assert http.delete(VERSION + "/tags/europe").json() == {"changed": False}
        linked = http.post(VERSION + "/links", json={"registry": "model", "collection": "resnet"})
        assert linked.status_code == 201, linked.text
        with web.client(narrow) as n:  # unlinking acts on the registry too
            assert n.delete(VERSION + "/links/model/resnet").status_code == 403
        assert http.delete(VERSION + "/links/model/resnet").json() == {"changed": True}
        assert http.delete(VERSION + "/links/model/resnet").json() == {"changed": False}
        tags = "/api/v1/collections/acme/vision/resnet/tags"
        assert http.post(tags, json={"tag": "golden"}).json() == {"changed": True}
        assert http.delete(tags + "/golden").json() == {"changed": True}
        assert http.post("/api/v1/collections/acme/vision/nothing/tags", json={"tag": "x"}).status_code == 404
        registry_tags = "/api/v1/registries/model/resnet/tags"
        assert http.post(registry_tags, json={"tag": "vision"}).json() == {"changed": True}
        assert http.delete(registry_tags + "/vision").json() == {"changed": True}
        with web.client(narrow) as n:
            assert n.post(registry_tags, json={"tag": "x"}).status_code == 403
        # an entity-scoped automation: applied and listed by an `acme/*` key
        entity_rule = rule(
            "golden-anywhere", "{type: collection_tag_added, tag_regex: golden}", scope="{entity: acme}"
        )
        with web.client(admin) as ci:
            applied = ci.post("/api/v1/automations/apply", json={"yaml": entity_rule})
            assert applied.status_code == 200, applied.text
            assert [a["name"] for a in ci.get("/api/v1/automations").json()] == ["golden-anywhere"]
        with web.client(vision_reader) as n:
            assert n.get("/api/v1/automations").json() == []  # acme/vision alone does not cover all of acme
    assert [(k[0], k[1], k[3]) for k in kinds(conn)] == [
        ("artifact_tag_added", "key:trainer", "europe"),
        ("artifact_tag_removed", "key:trainer", "europe"),
        ("registry_version_linked", "key:trainer", None),
        ("artifact_unlinked", "key:trainer", None),
        ("collection_tag_added", "key:trainer", "golden"),
        ("collection_tag_removed", "key:trainer", "golden"),
        ("collection_tag_added", "key:trainer", "vision"),
        ("collection_tag_removed", "key:trainer", "vision"),
    ]
