"""`engine.Api()`: changes made outside a run (aliases, tags, registry links, collection tags,
killing runs).

    api = engine.Api(user="alice")
    v = api.artifact_version("acme/vision", "mnist", "latest")
    api.add_alias(v, "production"); api.add_tag(v, "europe"); api.remove_tag(v, "europe")
    api.link_artifact(v, registry="model", collection="resnet")
    api.unlink_artifact(v, registry="model", collection="resnet")
    api.add_collection_tag("acme/vision/mnist", "golden")
    api.add_collection_tag("resnet", "vision", registry="model")
    api.kill_run("acme/vision", "3kq9x2ab")

Each call is one transaction that writes the change and its event(s).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine import clock
from engine.db import query
from engine.exceptions import NotFound
from engine.sdk import artifacts
from engine.sdk import session as sessions
from engine.sdk.artifacts import ArtifactVersion, RegistryLink
from engine.sdk.run import _login_name, _transition
from engine.sdk.validate import check_name, parse_project

VersionRef = ArtifactVersion | RegistryLink | str


class Api:
    """Administrative calls; `user` (default: the login name) is the author of the events."""

    def __init__(self, user: str | None = None):
        self.user = user if user is not None else _login_name()

    # -- artifacts ------------------------------------------------------------------------
    def artifact_version(self, project: str, collection: str, index_or_alias: int | str) -> ArtifactVersion:
        """A stored version by index (`3`, `"v3"`) or alias (`"latest"`); NotFound otherwise."""
        with sessions.using() as s:
            if s.remote is not None:
                parse_project(project)
                return s.remote.artifact_version(project, collection, index_or_alias)
            with s.transaction() as conn:
                return artifacts.find_version(conn, project, collection, index_or_alias)

    def add_alias(self, version: VersionRef, alias: str) -> bool:
        """Give `alias` to a version (moving it from the version that held it). For a
        RegistryLink, the alias lives in its registry collection. False: nothing changed."""
        with sessions.using() as s:
            if s.remote is not None:
                artifacts.check_alias(alias)
                if isinstance(version, RegistryLink):  # linking again applies the alias to the link
                    s.remote.link(version.version, version.registry, version.collection, [alias])
                    return True
                return s.remote.add_alias(self._remote_version(s.remote, version), alias)
        with sessions.using() as s, s.transaction() as conn:
            if isinstance(version, RegistryLink):
                return artifacts.set_registry_alias(conn, version.id, alias, author=self.user, at=clock.now())
            v = self._resolve(conn, version)
            return artifacts.set_alias(conn, v.id, alias, author=self.user, at=clock.now())

    def add_tag(self, version: VersionRef, tag: str) -> bool:
        """Tag a version (of a RegistryLink: the linked version). False: it had the tag."""
        with sessions.using() as s:
            if s.remote is not None:
                check_name("tag", tag)
                return s.remote.add_tag(self._remote_version(s.remote, version), tag)
        with sessions.using() as s, s.transaction() as conn:
            v = version.version if isinstance(version, RegistryLink) else self._resolve(conn, version)
            return artifacts.add_tag(conn, v.id, tag, author=self.user, at=clock.now())

    def link_artifact(
        self, version: VersionRef, registry: str, collection: str, aliases: Iterable[str] = ()
    ) -> RegistryLink:
        """Link a version into `registry`/`collection` (its own index there; `latest` moves
        to it). Linking the same version again returns the existing link."""
        with sessions.using() as s:
            if s.remote is not None:
                check_name("registry name", registry, pattern=True)
                names = [aliases] if isinstance(aliases, str) else list(aliases)
                return s.remote.link(self._remote_version(s.remote, version), registry, collection, names)
        with sessions.using() as s, s.transaction() as conn:
            v = version.version if isinstance(version, RegistryLink) else self._resolve(conn, version)
            return artifacts.link(
                conn,
                v,
                registry=registry,
                collection=collection,
                aliases=aliases,
                author=self.user,
                at=clock.now(),
            )

    def remove_tag(self, version: VersionRef, tag: str) -> bool:
        """Take a tag off a version (of a RegistryLink: the linked version). False: it did
        not have it."""
        with sessions.using() as s, s.transaction() as conn:
            v = version.version if isinstance(version, RegistryLink) else self._resolve(conn, version)
            return artifacts.remove_tag(conn, v.id, tag, author=self.user, at=clock.now())

    def unlink_artifact(
        self, version: VersionRef, registry: str | None = None, collection: str | None = None
    ) -> bool:
        """Unlink a version from a registry collection: a RegistryLink names its own, any
        other version needs `registry` and `collection`. False: it was not linked there."""
        if isinstance(version, RegistryLink):
            registry = registry or version.registry
            collection = collection or version.collection
        if registry is None or collection is None:
            raise ValueError("unlink_artifact needs registry= and collection= (or a RegistryLink)")
        with sessions.using() as s, s.transaction() as conn:
            v = version.version if isinstance(version, RegistryLink) else self._resolve(conn, version)
            return artifacts.unlink(
                conn, v, registry=registry, collection=collection, author=self.user, at=clock.now()
            )

    def add_collection_tag(self, collection: str, tag: str, registry: str | None = None) -> bool:
        """Tag a collection (not a version): `entity/project/name`, or with `registry` the
        name of a collection in that registry. False: it had the tag."""
        with sessions.using() as s, s.transaction() as conn:
            return artifacts.tag_collection(
                conn, collection, tag, registry=registry, add=True, author=self.user, at=clock.now()
            )

    def remove_collection_tag(self, collection: str, tag: str, registry: str | None = None) -> bool:
        """Take a tag off a collection (as `add_collection_tag`). False: it did not have it."""
        with sessions.using() as s, s.transaction() as conn:
            return artifacts.tag_collection(
                conn, collection, tag, registry=registry, add=False, author=self.user, at=clock.now()
            )

    @staticmethod
    def _resolve(conn, version: ArtifactVersion | str) -> ArtifactVersion:
        if isinstance(version, ArtifactVersion):
            return artifacts.version_by_id(conn, version.id)
        return artifacts.find_version(conn, *_reference(version))

    @staticmethod
    def _remote_version(remote: Any, version: VersionRef) -> ArtifactVersion:
        if isinstance(version, RegistryLink):
            return version.version
        if isinstance(version, ArtifactVersion):
            return version
        return remote.artifact_version(*_reference(version))

    # -- runs -----------------------------------------------------------------------------
    def kill_run(self, project: str, run_id: str) -> bool:
        """Mark a running run `killed` (an event is written; killed never triggers automations).
        False when the run was not running. NotFound when it does not exist."""
        entity, name = parse_project(project)
        check_name("run id", run_id)
        with sessions.using() as s:
            if s.remote is not None:
                return s.remote.kill_run(project, run_id)
        return self._kill_run(entity, name, run_id)

    def _kill_run(self, entity: str, name: str, run_id: str) -> bool:
        project = f"{entity}/{name}"
        with sessions.using() as s, s.transaction() as conn:
            row = conn.execute(
                query("find_run"), {"entity": entity, "project": name, "run_id": run_id}
            ).fetchone()
            if row is None:
                raise NotFound(f"no run {run_id!r} in project {project}")
            return _transition(conn, row[0], ("running",), "killed", None, self.user, clock.now())

    # -- automations ----------------------------------------------------------------------
    def apply(self, *rules: Any, prune: bool = False) -> Any:
        """Create or update automation rules by name (see `engine.automations.apply`); over
        HTTP with an admin key (the YAML text, or the models written as YAML)."""
        from engine import automations  # the rule language is not loaded until it is used
        from engine.rules import Automation

        with sessions.using() as s:
            if s.remote is not None:
                import yaml

                texts = []
                for rule in rules:
                    if isinstance(rule, Automation):
                        rule = yaml.safe_dump(
                            rule.model_dump(mode="json", exclude_none=True), sort_keys=False
                        )
                    elif not isinstance(rule, str):
                        raise TypeError(
                            f"apply() takes Automation models or YAML text, not {type(rule).__name__}"
                        )
                    texts.append(rule)
                return s.remote.apply(texts, prune=prune)

        return automations.apply(*rules, prune=prune)


def _reference(version: Any) -> tuple[str, str, str]:
    """`"entity/project/collection:v3"` (or `...:alias`) → (project, collection, index or alias)."""
    if isinstance(version, str):
        path, _, which = version.rpartition(":")
        parts = path.split("/")
        if len(parts) != 3 or not all(parts) or not which:
            raise ValueError(f"artifact version {version!r} must look like 'entity/project/collection:v3'")
        return f"{parts[0]}/{parts[1]}", parts[2], which
    raise TypeError(
        f"expected an ArtifactVersion or 'entity/project/collection:vN', not {type(version).__name__}"
    )
