"""Where a rule looks: one project or every project of an entity (optionally narrowed to
collections), or one registry."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from engine.rules.base import RuleModel, fail
from engine.rules.fields import CollectionName, EntityName, ProjectPath, Regex, RegistryName


class Scope(RuleModel):
    project: ProjectPath | None = Field(
        None, description="`entity/project`: everything in it, now and later."
    )
    entity: EntityName | None = Field(
        None,
        description="An entity: every project of it, existing or created later (valid wherever project is).",
    )
    registry: RegistryName | None = Field(
        None, description="A registry name: every collection in it, now and later."
    )
    collection: CollectionName | None = Field(
        None, description="Narrow artifact events to this one collection."
    )
    collection_regex: Regex | None = Field(
        None,
        description="Narrow artifact events of a project to collections whose name matches (PostgreSQL regex).",
    )

    @model_validator(mode="after")
    def _one_place(self) -> Scope:
        problems = []
        given = [name for name in ("project", "entity", "registry") if getattr(self, name) is not None]
        if len(given) != 1:
            where = (given[1],) if given else ()
            problems.append((where, "give exactly one of project (entity/project), entity or registry"))
        if self.collection is not None and self.collection_regex is not None:
            problems.append((("collection_regex",), "give collection or collection_regex, not both"))
        if self.registry is not None and self.collection_regex is not None:
            problems.append(
                (
                    ("collection_regex",),
                    "collection_regex narrows a project scope only; a registry uses collection",
                )
            )
        fail("Scope", problems)
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_entity(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out when unset, so that a rule stored before entity scopes existed keeps its
        # hash (`rules apply` does not see every rule as changed after an upgrade).
        data = handler(self)
        if data.get("entity") is None:
            data.pop("entity", None)
        return data

    @property
    def entity_name(self) -> str | None:
        """The entity of a project or entity scope."""
        return self.project.split("/", 1)[0] if self.project else self.entity

    @property
    def project_name(self) -> str | None:
        return self.project.split("/", 1)[1] if self.project else None

    def describe(self) -> str:
        """Short form: `acme/vision`, `acme/vision/mnist`, `acme/vision ~^mn`, `entity:acme`,
        `registry:model/resnet`."""
        where = self.project or (f"entity:{self.entity}" if self.entity else f"registry:{self.registry}")
        if self.collection:
            where += f"/{self.collection}"
        if self.collection_regex:
            where += f" ~{self.collection_regex}"
        return where
