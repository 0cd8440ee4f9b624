"""Artifact collections, versions, aliases, tags and registry links.

Each function takes a connection inside the caller's transaction, so that a whole
`log_artifact` (version, `latest`, extra aliases, tags) or `link_artifact` (link, registry
`latest`, aliases) commits at once with all its events. Each change and its event are one
statement in engine/sql/queries/sdk.sql.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from engine import clock
from engine.db import one_row, query
from engine.exceptions import NotFound
from engine.sdk.validate import check_json_object, check_name, parse_project

LATEST = "latest"
_VERSION = re.compile(r"v[0-9]+")


@dataclass(frozen=True)
class ArtifactVersion:
    """A handle on one stored artifact version (what `log_artifact` returns)."""

    id: int
    project: str  # "entity/project"
    collection: str
    type: str
    version_index: int
    digest: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def version_string(self) -> str:
        """`entity/project/collection:vN`"""
        return f"{self.project}/{self.collection}:v{self.version_index}"

    def __str__(self) -> str:
        return self.version_string


@dataclass(frozen=True)
class RegistryLink:
    """A version linked into a registry collection, with its own index there."""

    id: int
    registry: str
    collection: str
    version_index: int
    version: ArtifactVersion

    @property
    def version_string(self) -> str:
        """`registry/collection:vN`"""
        return f"{self.registry}/{self.collection}:v{self.version_index}"

    def __str__(self) -> str:
        return self.version_string


def default_digest(metadata: dict[str, Any], version_index: int) -> str:
    """sha256 of the canonical metadata JSON and the version index."""
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":")) + f"#{version_index}"
    return hashlib.sha256(text.encode()).hexdigest()


def check_alias(alias: str) -> str:
    """1-256 characters; `vN` is refused because it names a version index."""
    check_name("alias", alias)
    if _VERSION.fullmatch(alias):
        raise ValueError(f"alias {alias!r} looks like a version index; choose another name")
    return alias


def _unique(names: Iterable[str], check) -> list[str]:
    """Names in order without repeats (a single string counts as one name)."""
    if isinstance(names, str):
        names = [names]
    return list(dict.fromkeys(check(n) for n in names))


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    return check_json_object("artifact metadata", {} if metadata is None else metadata)


def create_version(
    conn: psycopg.Connection,
    *,
    project_id: int,
    project: str,
    name: str,
    type: str,
    metadata: dict[str, Any] | None,
    aliases: Iterable[str],
    tags: Iterable[str],
    digest: str | None,
    run_pk: int | None,
    author: str | None,
    at: datetime,
) -> ArtifactVersion:
    """A new version v(N+1) of `name`; `latest` moves to it, then the extra aliases and tags."""
    check_name("artifact name", name)
    check_name("artifact type", type)
    metadata = check_metadata(metadata)
    aliases = [a for a in _unique(aliases, check_alias) if a != LATEST]
    tags = _unique(tags, lambda t: check_name("tag", t))
    collection_id, stored_type = one_row(
        conn.execute(query("upsert_collection"), {"project_id": project_id, "name": name, "type": type})
    )
    if stored_type != type:
        raise ValueError(f"artifact collection {project}/{name} has type {stored_type!r}, not {type!r}")
    (index,) = one_row(conn.execute(query("next_version_index"), {"collection_id": collection_id}))
    digest = digest if digest is not None else default_digest(metadata, index)
    (version_id,) = one_row(
        conn.execute(
            query("create_version"),
            {
                "collection_id": collection_id,
                "version_index": index,
                "digest": digest,
                "metadata": Jsonb(metadata),
                "run_pk": run_pk,
                "author": author,
                "at": at,
                "project_id": project_id,
                "collection": name,
                "type": type,
            },
        )
    )
    for alias in [LATEST, *aliases]:
        set_alias(conn, version_id, alias, author=author, run_pk=run_pk, at=at)
    for tag in tags:
        add_tag(conn, version_id, tag, author=author, run_pk=run_pk, at=at)
    return ArtifactVersion(version_id, project, name, type, index, digest, metadata)


def set_alias(
    conn: psycopg.Connection,
    version_id: int,
    alias: str,
    *,
    author: str | None,
    at: datetime,
    run_pk: int | None = None,
) -> bool:
    """Give `alias` to the version (moving it from another version). False: it had it already."""
    check_alias(alias)
    if conn.execute(query("lock_version_collection"), {"version_id": version_id}).fetchone() is None:
        raise NotFound(f"artifact version {version_id} does not exist")
    row = conn.execute(
        query("set_artifact_alias"),
        {"version_id": version_id, "alias": alias, "author": author, "at": at, "run_pk": run_pk},
    ).fetchone()
    return row is not None


def add_tag(
    conn: psycopg.Connection,
    version_id: int,
    tag: str,
    *,
    author: str | None,
    at: datetime,
    run_pk: int | None = None,
) -> bool:
    """Tag the version. False: it had the tag already."""
    check_name("tag", tag)
    row = conn.execute(
        query("add_artifact_tag"),
        {"version_id": version_id, "tag": tag, "author": author, "at": at, "run_pk": run_pk},
    ).fetchone()
    return row is not None


def remove_alias(conn: psycopg.Connection, version_id: int, alias: str) -> bool:
    """Take `alias` off the version (`latest` is the engine's: refused). False: it did not hold it."""
    check_alias(alias)
    if alias == LATEST:
        raise ValueError("`latest` follows the newest version and cannot be removed")
    if conn.execute(query("lock_version_collection"), {"version_id": version_id}).fetchone() is None:
        raise NotFound(f"artifact version {version_id} does not exist")
    return (
        conn.execute(query("remove_artifact_alias"), {"version_id": version_id, "alias": alias}).fetchone()
        is not None
    )


def remove_tag(
    conn: psycopg.Connection,
    version_id: int,
    tag: str,
    *,
    author: str | None = None,
    at: datetime | None = None,
    run_pk: int | None = None,
) -> bool:
    """Take `tag` off the version (an `artifact_tag_removed` event). False: it did not have it."""
    check_name("tag", tag)
    params = {
        "version_id": version_id,
        "tag": tag,
        "author": author,
        "at": at or clock.now(),
        "run_pk": run_pk,
    }
    return conn.execute(query("remove_artifact_tag"), params).fetchone() is not None


def unlink(
    conn: psycopg.Connection,
    version: ArtifactVersion,
    *,
    registry: str,
    collection: str,
    author: str | None,
    at: datetime,
) -> bool:
    """Unlink a version from `registry/collection` (an `artifact_unlinked` event recording
    the aliases the link held; they go with it, and `latest` moves back to the newest link
    left). Linking it again later makes a new link with the next index. False: it was not
    linked there."""
    check_name("registry name", registry, pattern=True)
    check_name("registry collection", collection)
    found = conn.execute(
        query("registry_collection_by_name"), {"registry": registry, "collection": collection}
    ).fetchone()
    if found is None:
        return False
    rc_id = found[0]
    row = conn.execute(
        query("unlink"),
        {"registry_collection_id": rc_id, "version_id": version.id, "author": author, "at": at},
    ).fetchone()
    if row is None:
        return False
    if LATEST in row[1]:
        newest = conn.execute(query("newest_link"), {"registry_collection_id": rc_id}).fetchone()
        if newest is not None:
            set_registry_alias(conn, newest[0], LATEST, author=author, at=at)
    return True


def _collection_target(conn: psycopg.Connection, collection: str, registry: str | None) -> tuple[str, int]:
    """(`artifact` or `registry`, id) of a collection: `entity/project/name`, or a registry
    collection's name with `registry`. NotFound when it does not exist."""
    if registry is not None:
        check_name("registry name", registry, pattern=True)
        check_name("registry collection", collection)
        found = conn.execute(
            query("registry_collection_by_name"), {"registry": registry, "collection": collection}
        ).fetchone()
        if found is None:
            raise NotFound(f"no collection {collection!r} in registry {registry!r}")
        return "registry", found[0]
    project, slash, name = collection.rpartition("/")
    if not slash:
        raise ValueError(
            f"collection {collection!r} must look like 'entity/project/name' (or give registry=)"
        )
    entity, project_name = parse_project(project)
    check_name("artifact name", name)
    found = conn.execute(
        query("collection_by_name"), {"entity": entity, "project": project_name, "collection": name}
    ).fetchone()
    if found is None:
        raise NotFound(f"no artifact collection {collection}")
    return "artifact", found[0]


_COLLECTION_TAG_QUERIES = {
    ("artifact", True): "add_collection_tag",
    ("artifact", False): "remove_collection_tag",
    ("registry", True): "add_registry_collection_tag",
    ("registry", False): "remove_registry_collection_tag",
}


def tag_collection(
    conn: psycopg.Connection,
    collection: str,
    tag: str,
    *,
    registry: str | None = None,
    add: bool,
    author: str | None,
    at: datetime,
) -> bool:
    """Add (`add`) or remove a tag of a collection (not of a version), with its
    `collection_tag_added`/`collection_tag_removed` event. False: nothing changed."""
    check_name("tag", tag)
    where, collection_id = _collection_target(conn, collection, registry)
    name = _COLLECTION_TAG_QUERIES[where, add]
    key = "registry_collection_id" if where == "registry" else "collection_id"
    params = {key: collection_id, "tag": tag, "author": author, "at": at}
    return conn.execute(query(name), params).fetchone() is not None


def link(
    conn: psycopg.Connection,
    version: ArtifactVersion,
    *,
    registry: str,
    collection: str,
    aliases: Iterable[str],
    author: str | None,
    at: datetime,
) -> RegistryLink:
    """Link a version into `registry/collection` with the next index there; the registry
    collection's `latest` moves to it, then the extra aliases. Linking the same version
    again returns the existing link (only the extra aliases are applied)."""
    check_name("registry name", registry, pattern=True)
    check_name("registry collection", collection)
    aliases = [a for a in _unique(aliases, check_alias) if a != LATEST]
    row = _version_row(conn, version.id)
    stored, (project_id, collection_id) = _handle(row), row[8:10]
    (registry_id,) = one_row(conn.execute(query("upsert_registry"), {"registry": registry}))
    (rc_id,) = one_row(
        conn.execute(
            query("upsert_registry_collection"),
            {"registry_id": registry_id, "collection": collection, "type": stored.type},
        )
    )
    existing = conn.execute(
        query("find_link"), {"registry_collection_id": rc_id, "version_id": stored.id}
    ).fetchone()
    if existing is not None:
        link_id, index = existing
        new_aliases = aliases
    else:
        (index,) = one_row(conn.execute(query("next_link_index"), {"registry_collection_id": rc_id}))
        (link_id,) = one_row(
            conn.execute(
                query("create_link"),
                {
                    "registry_collection_id": rc_id,
                    "version_id": stored.id,
                    "version_index": index,
                    "author": author,
                    "at": at,
                    "project_id": project_id,
                    "collection_id": collection_id,
                    "registry_id": registry_id,
                    "registry": registry,
                    "collection": collection,
                    "artifact_collection": stored.collection,
                    "artifact_version_index": stored.version_index,
                    "type": stored.type,
                },
            )
        )
        new_aliases = [LATEST, *aliases]
    for alias in new_aliases:
        set_registry_alias(conn, link_id, alias, author=author, at=at)
    return RegistryLink(link_id, registry, collection, index, stored)


def set_registry_alias(
    conn: psycopg.Connection, link_id: int, alias: str, *, author: str | None, at: datetime
) -> bool:
    """Give `alias` to a link inside its registry collection (moving it). False: it had it."""
    check_alias(alias)
    if conn.execute(query("lock_link_collection"), {"link_id": link_id}).fetchone() is None:
        raise NotFound(f"registry link {link_id} does not exist")
    row = conn.execute(
        query("set_registry_alias"), {"link_id": link_id, "alias": alias, "author": author, "at": at}
    ).fetchone()
    return row is not None


# -- lookups ---------------------------------------------------------------------------------
def _handle(row: tuple) -> ArtifactVersion:
    vid, entity, project, collection, type_, index, digest, metadata, _, _ = row
    return ArtifactVersion(vid, f"{entity}/{project}", collection, type_, index, digest, metadata)


def _version_row(conn: psycopg.Connection, version_id: int) -> tuple:
    row = conn.execute(query("version_by_id"), {"version_id": version_id}).fetchone()
    if row is None:
        raise NotFound(f"artifact version {version_id} does not exist")
    return row


def version_by_id(conn: psycopg.Connection, version_id: int) -> ArtifactVersion:
    return _handle(_version_row(conn, version_id))


def find_version(
    conn: psycopg.Connection, project: str, collection: str, index_or_alias: int | str
) -> ArtifactVersion:
    """A version by index (`3` or `"v3"`) or by alias (`"latest"`, `"production"`)."""
    entity, name = parse_project(project)
    params: dict[str, Any] = {"entity": entity, "project": name, "collection": collection}
    index = _as_index(index_or_alias)
    if index is not None:
        row = conn.execute(query("version_by_index"), params | {"version_index": index}).fetchone()
    else:
        row = conn.execute(query("version_by_alias"), params | {"alias": index_or_alias}).fetchone()
    if row is None:
        raise NotFound(f"no artifact version {project}/{collection}:{index_or_alias}")
    return _handle(row)


def _as_index(index_or_alias: int | str) -> int | None:
    if isinstance(index_or_alias, bool):
        raise TypeError("a version is an index (3, 'v3') or an alias, not a bool")
    if isinstance(index_or_alias, int):
        return index_or_alias
    if isinstance(index_or_alias, str) and index_or_alias[:1] == "v" and index_or_alias[1:].isdigit():
        return int(index_or_alias[1:])
    if not isinstance(index_or_alias, str):
        raise TypeError(f"a version is an index or an alias, not {type(index_or_alias).__name__}")
    return None
