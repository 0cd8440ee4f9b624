"""Artifact versions, aliases (and `latest`), tags and registry links, each with its event."""

from __future__ import annotations

import pytest

import engine
from engine.exceptions import NotFound
from engine.sdk.artifacts import default_digest
from tests.integration.sdk_helpers import events, same_transaction


@pytest.fixture
def run(database_url):
    run = engine.init(project="acme/vision", user="alice", system_metrics_interval=0)
    yield run
    run.finish()


def _aliases(conn, collection_id: int) -> dict[str, int]:
    """alias -> version_index in one artifact collection."""
    rows = conn.execute(
        "SELECT a.alias, v.version_index FROM artifact_aliases a JOIN artifact_versions v ON v.id = a.version_id"
        " WHERE a.collection_id = %s",
        (collection_id,),
    )
    return dict(rows.fetchall())


def _collection_id(conn, name: str) -> int:
    return conn.execute("SELECT id FROM artifact_collections WHERE name = %s", (name,)).fetchone()[0]


def test_log_artifact_creates_v0_with_latest_aliases_and_tags(conn, run):
    v0 = run.log_artifact(
        "mnist", type="dataset", metadata={"rows": 60000}, aliases=["candidate"], tags=["eu"]
    )
    assert (v0.project, v0.collection, v0.type, v0.version_index) == ("acme/vision", "mnist", "dataset", 0)
    assert v0.version_string == "acme/vision/mnist:v0" and str(v0) == v0.version_string
    assert v0.digest == default_digest({"rows": 60000}, 0)
    stored = conn.execute(
        "SELECT version_index, digest, metadata, run_pk, author FROM artifact_versions WHERE id = %s",
        (v0.id,),
    ).fetchone()
    assert stored == (0, v0.digest, {"rows": 60000}, run.pk, "alice")
    cid = _collection_id(conn, "mnist")
    assert _aliases(conn, cid) == {"latest": 0, "candidate": 0}
    assert [t for (t,) in conn.execute("SELECT tag FROM artifact_tags WHERE version_id = %s", (v0.id,))] == [
        "eu"
    ]

    got = [(e["type"], e["details"]) for e in events(conn) if e["type"] != "run_state"]
    assert got == [
        (
            "artifact_version_created",
            {"collection": "mnist", "collection_type": "dataset", "version_index": 0, "digest": v0.digest},
        ),
        (
            "artifact_alias_added",
            {
                "alias": "latest",
                "version_index": 0,
                "previous_version_id": None,
                "collection": "mnist",
                "collection_type": "dataset",
            },
        ),
        (
            "artifact_alias_added",
            {
                "alias": "candidate",
                "version_index": 0,
                "previous_version_id": None,
                "collection": "mnist",
                "collection_type": "dataset",
            },
        ),
        (
            "artifact_tag_added",
            {"tag": "eu", "version_index": 0, "collection": "mnist", "collection_type": "dataset"},
        ),
    ]
    for e in events(conn):
        if e["type"] != "run_state":
            assert (e["author"], e["project_id"], e["run_pk"], e["collection_id"], e["version_id"]) == (
                "alice",
                run.project_id,
                run.pk,
                cid,
                v0.id,
            )
            # the whole log_artifact is one transaction
            assert same_transaction(conn, "artifact_versions", "id", v0.id, e["id"])


def test_latest_follows_new_versions_and_aliases_move(conn, run):
    v0 = run.log_artifact("mnist", type="dataset", aliases=["production"])
    v1 = run.log_artifact("mnist", type="dataset", digest="abc")
    assert (v1.version_index, v1.digest) == (1, "abc")
    cid = _collection_id(conn, "mnist")
    assert _aliases(conn, cid) == {"latest": 1, "production": 0}
    latest_moves = [e for e in events(conn, "artifact_alias_added") if e["details"]["alias"] == "latest"]
    moves = [(e["version_id"], e["details"]["previous_version_id"]) for e in latest_moves]
    assert moves == [(v0.id, None), (v1.id, v0.id)]

    api = engine.Api(user="bob")
    assert api.add_alias(v1, "production") is True  # moves from v0
    assert _aliases(conn, cid) == {"latest": 1, "production": 1}
    move = events(conn, "artifact_alias_added")[-1]
    assert (move["author"], move["version_id"], move["run_pk"]) == ("bob", v1.id, None)
    assert move["details"] == {
        "alias": "production",
        "version_index": 1,
        "previous_version_id": v0.id,
        "collection": "mnist",
        "collection_type": "dataset",
    }
    assert same_transaction(conn, "artifact_aliases", "alias", "production", move["id"])
    # adding an alias a version already holds changes nothing and writes no event
    before = len(events(conn))
    assert api.add_alias(v1, "production") is False
    assert len(events(conn)) == before
    with pytest.raises(ValueError, match="version index"):
        api.add_alias(v1, "v0")


def test_tags_on_several_versions(conn, run):
    v0 = run.log_artifact("weights", type="model")
    v1 = run.log_artifact("weights", type="model", tags=["europe"])
    api = engine.Api()
    assert api.add_tag(v0, "europe") is True
    assert api.add_tag(v0, "europe") is False  # once per version
    tagged = conn.execute(
        "SELECT v.version_index FROM artifact_tags t JOIN artifact_versions v ON v.id = t.version_id"
        " WHERE t.tag = 'europe' ORDER BY 1"
    ).fetchall()
    assert tagged == [(0,), (1,)]
    tag_events = events(conn, "artifact_tag_added")
    assert [(e["version_id"], e["details"]["tag"]) for e in tag_events] == [
        (v1.id, "europe"),
        (v0.id, "europe"),
    ]


def test_a_collection_keeps_its_type(run):
    run.log_artifact("mnist", type="dataset")
    with pytest.raises(ValueError, match="type 'dataset'"):
        run.log_artifact("mnist", type="model")


def test_registry_links_have_their_own_index_and_latest(conn, run):
    other = engine.init(project="acme/nlp", system_metrics_interval=0)
    a0 = run.log_artifact("resnet", type="model")
    a1 = run.log_artifact("resnet", type="model")
    b0 = other.log_artifact("bert", type="model")
    other.finish()
    api = engine.Api(user="carol")
    l0 = api.link_artifact(a1, registry="model", collection="vision-models", aliases=["staging"])
    l1 = api.link_artifact(b0, registry="model", collection="vision-models")
    assert (l0.version_index, l1.version_index) == (0, 1)
    assert l1.version_string == "model/vision-models:v1" and l1.version == b0
    # re-linking a version returns its link, without new events
    before = len(events(conn))
    again = api.link_artifact(a1, registry="model", collection="vision-models")
    assert (again.id, again.version_index) == (l0.id, 0) and len(events(conn)) == before
    l2 = api.link_artifact(a0, registry="model", collection="vision-models")
    assert l2.version_index == 2

    registry_aliases = dict(
        conn.execute(
            "SELECT a.alias, l.version_index FROM registry_aliases a JOIN registry_links l ON l.id = a.link_id"
        ).fetchall()
    )
    assert registry_aliases == {"latest": 2, "staging": 0}
    # the artifacts' own aliases are untouched
    assert _aliases(conn, _collection_id(conn, "resnet")) == {"latest": 1}

    links = events(conn, "registry_version_linked")
    assert [(e["link_id"], e["version_id"], e["project_id"]) for e in links] == [
        (l0.id, a1.id, run.project_id),
        (l1.id, b0.id, other.project_id),
        (l2.id, a0.id, run.project_id),
    ]
    rid, rcid = links[0]["registry_id"], links[0]["registry_collection_id"]
    assert links[0]["details"] == {
        "registry": "model",
        "collection": "vision-models",
        "version_index": 0,
        "artifact_collection": "resnet",
        "artifact_version_index": 1,
        "collection_type": "model",
    }
    assert {(e["author"], e["registry_id"], e["registry_collection_id"]) for e in links} == {
        ("carol", rid, rcid)
    }
    assert same_transaction(conn, "registry_links", "id", l0.id, links[0]["id"])

    registry_alias_events = [e for e in events(conn, "artifact_alias_added") if e["registry_id"] is not None]
    assert [
        (e["link_id"], e["details"]["alias"], e["details"]["previous_link_id"]) for e in registry_alias_events
    ] == [
        (l0.id, "latest", None),
        (l0.id, "staging", None),
        (l1.id, "latest", l0.id),
        (l2.id, "latest", l1.id),
    ]
    first = registry_alias_events[0]
    assert first["details"]["registry"] == "model" and first["details"]["collection"] == "vision-models"
    # registry aliases are not project events: project-scoped alias rules do not see them
    assert first["project_id"] is None and first["registry_collection_id"] == rcid
    assert same_transaction(conn, "registry_links", "id", l0.id, first["id"])

    assert api.add_alias(l1, "staging") is True  # moves inside the registry collection
    registry_aliases = dict(
        conn.execute(
            "SELECT a.alias, l.version_index FROM registry_aliases a JOIN registry_links l ON l.id = a.link_id"
        ).fetchall()
    )
    assert registry_aliases == {"latest": 2, "staging": 1}
    assert events(conn, "artifact_alias_added")[-1]["details"]["previous_link_id"] == l0.id


def test_looking_versions_up(conn, run):
    v0 = run.log_artifact("mnist", type="dataset", metadata={"split": "train"}, aliases=["production"])
    v1 = run.log_artifact("mnist", type="dataset")
    api = engine.Api()
    assert api.artifact_version("acme/vision", "mnist", 0) == v0
    assert api.artifact_version("acme/vision", "mnist", "v1") == v1
    assert api.artifact_version("acme/vision", "mnist", "latest") == v1
    found = api.artifact_version("acme/vision", "mnist", "production")
    assert found == v0 and found.metadata == {"split": "train"}
    for missing in (("mnist", 7), ("mnist", "staging"), ("nope", "latest")):
        with pytest.raises(NotFound):
            api.artifact_version("acme/vision", *missing)
    # a version string works wherever a version is expected
    assert api.add_tag("acme/vision/mnist:v1", "checked") is True
    assert api.add_alias("acme/vision/mnist:production", "golden") is True
    assert _aliases(conn, _collection_id(conn, "mnist"))["golden"] == 0
