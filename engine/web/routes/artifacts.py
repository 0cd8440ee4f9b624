"""Artifact versions: read one; add or remove an alias or a tag; link it into a registry or
unlink it; tag a collection (of a project or a registry)."""

from __future__ import annotations

from typing import Annotated

import psycopg
from fastapi import APIRouter

from engine import clock
from engine.keys import Place
from engine.sdk import artifacts
from engine.sdk.artifacts import ArtifactVersion
from engine.web.auth import Principal, access, project_in_path, project_in_path_and_registry_in_body
from engine.web.deps import Conn
from engine.web.models import AliasIn, ArtifactOut, Changed, LinkIn, LinkOut, TagIn

router = APIRouter(tags=["artifacts"])
VERSION = "/artifacts/{entity}/{project}/{collection}/{version}"


def artifact_out(v: ArtifactVersion) -> ArtifactOut:
    return ArtifactOut(
        id=v.id,
        project=v.project,
        collection=v.collection,
        type=v.type,
        version_index=v.version_index,
        version=v.version_string,
        digest=v.digest,
        metadata=v.metadata,
    )


def _find(
    conn: psycopg.Connection, entity: str, project: str, collection: str, version: str
) -> ArtifactVersion:
    """`version`: an index (`3`, `v3`) or an alias (`latest`)."""
    which: int | str = int(version) if version.isdigit() else version
    return artifacts.find_version(conn, f"{entity}/{project}", collection, which)


@router.get(VERSION, dependencies=[access("read", project_in_path)])
def get_version(entity: str, project: str, collection: str, version: str, conn: Conn) -> ArtifactOut:
    """A stored version, by index (`3`, `v3`) or alias (`latest`)."""
    return artifact_out(_find(conn, entity, project, collection, version))


@router.post(VERSION + "/aliases")
def add_alias(
    entity: str,
    project: str,
    collection: str,
    version: str,
    body: AliasIn,
    principal: Annotated[Principal, access("ingest", project_in_path)],
    conn: Conn,
) -> Changed:
    """Give the alias to this version (moving it from the version that held it)."""
    with conn.transaction():
        v = _find(conn, entity, project, collection, version)
        return Changed(
            changed=artifacts.set_alias(conn, v.id, body.alias, author=principal.author, at=clock.now())
        )


@router.delete(VERSION + "/aliases/{alias}", dependencies=[access("ingest", project_in_path)])
def remove_alias(entity: str, project: str, collection: str, version: str, alias: str, conn: Conn) -> Changed:
    """Take the alias off this version (`latest` cannot be removed)."""
    with conn.transaction():
        v = _find(conn, entity, project, collection, version)
        return Changed(changed=artifacts.remove_alias(conn, v.id, alias))


@router.delete(VERSION + "/tags/{tag}")
def remove_tag(
    entity: str,
    project: str,
    collection: str,
    version: str,
    tag: str,
    conn: Conn,
    principal: Principal = access("ingest", project_in_path),
) -> Changed:
    """Take the tag off this version (an `artifact_tag_removed` event)."""
    with conn.transaction():
        v = _find(conn, entity, project, collection, version)
        return Changed(changed=artifacts.remove_tag(conn, v.id, tag, author=principal.author, at=clock.now()))


@router.post(VERSION + "/tags")
def add_tag(
    entity: str,
    project: str,
    collection: str,
    version: str,
    body: TagIn,
    principal: Annotated[Principal, access("ingest", project_in_path)],
    conn: Conn,
) -> Changed:
    """Tag this version."""
    with conn.transaction():
        v = _find(conn, entity, project, collection, version)
        return Changed(
            changed=artifacts.add_tag(conn, v.id, body.tag, author=principal.author, at=clock.now())
        )


@router.post(VERSION + "/links", status_code=201)
def link(
    entity: str,
    project: str,
    collection: str,
    version: str,
    body: LinkIn,
    principal: Annotated[Principal, access("ingest", project_in_path_and_registry_in_body, body=True)],
    conn: Conn,
) -> LinkOut:
    """Link this version into a registry collection (linking it again returns the same link)."""
    with conn.transaction():
        v = _find(conn, entity, project, collection, version)
        made = artifacts.link(
            conn,
            v,
            registry=body.registry,
            collection=body.collection,
            aliases=body.aliases,
            author=principal.author,
            at=clock.now(),
        )
    return LinkOut(
        id=made.id,
        registry=made.registry,
        collection=made.collection,
        version_index=made.version_index,
        version=made.version_string,
        artifact=artifact_out(made.version),
    )


def project_and_registry_in_path(
    conn: psycopg.Connection, params: dict[str, str], payload: object
) -> list[Place]:
    """An unlink: the version's project, and the registry it leaves."""
    return [*project_in_path(conn, params, payload), Place("registry", params["registry"])]


def registry_in_path(conn: psycopg.Connection, params: dict[str, str], payload: object) -> list[Place]:
    return [Place("registry", params["registry"])]


@router.delete(VERSION + "/links/{registry}/{registry_collection}")
def unlink(
    entity: str,
    project: str,
    collection: str,
    version: str,
    registry: str,
    registry_collection: str,
    conn: Conn,
    principal: Principal = access("ingest", project_and_registry_in_path),
) -> Changed:
    """Unlink this version from a registry collection (an `artifact_unlinked` event)."""
    with conn.transaction():
        v = _find(conn, entity, project, collection, version)
        return Changed(
            changed=artifacts.unlink(
                conn,
                v,
                registry=registry,
                collection=registry_collection,
                author=principal.author,
                at=clock.now(),
            )
        )


COLLECTION = "/collections/{entity}/{project}/{collection}/tags"
REGISTRY_COLLECTION = "/registries/{registry}/{collection}/tags"


def _tag_collection(
    conn: psycopg.Connection, principal: Principal, path: str, registry: str | None, tag: str, add: bool
) -> Changed:
    with conn.transaction():
        changed = artifacts.tag_collection(
            conn, path, tag, registry=registry, add=add, author=principal.author, at=clock.now()
        )
    return Changed(changed=changed)


@router.post(COLLECTION)
def add_collection_tag(
    entity: str,
    project: str,
    collection: str,
    body: TagIn,
    conn: Conn,
    principal: Principal = access("ingest", project_in_path),
) -> Changed:
    """Tag a project's artifact collection (not a version)."""
    return _tag_collection(conn, principal, f"{entity}/{project}/{collection}", None, body.tag, True)


@router.delete(COLLECTION + "/{tag}")
def remove_collection_tag(
    entity: str,
    project: str,
    collection: str,
    tag: str,
    conn: Conn,
    principal: Principal = access("ingest", project_in_path),
) -> Changed:
    """Take a tag off a project's artifact collection."""
    return _tag_collection(conn, principal, f"{entity}/{project}/{collection}", None, tag, False)


@router.post(REGISTRY_COLLECTION)
def add_registry_collection_tag(
    registry: str,
    collection: str,
    body: TagIn,
    conn: Conn,
    principal: Principal = access("ingest", registry_in_path),
) -> Changed:
    """Tag a registry collection."""
    return _tag_collection(conn, principal, collection, registry, body.tag, True)


@router.delete(REGISTRY_COLLECTION + "/{tag}")
def remove_registry_collection_tag(
    registry: str,
    collection: str,
    tag: str,
    conn: Conn,
    principal: Principal = access("ingest", registry_in_path),
) -> Changed:
    """Take a tag off a registry collection."""
    return _tag_collection(conn, principal, collection, registry, tag, False)
