"""Where a rule looks: one project (optionally narrowed to collections) or one registry."""

from __future__ import annotations

from pydantic import Field, model_validator

from engine.rules.base import RuleModel, fail
from engine.rules.fields import CollectionName, ProjectPath, Regex, RegistryName


class Scope(RuleModel):
    project: ProjectPath | None = Field(
        None, description="`entity/project`: everything in it, now and later."
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
        if (self.project is None) == (self.registry is None):
            where = ("registry",) if self.project is not None else ()
            problems.append((where, "give exactly one of project (entity/project) or registry"))
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

    @property
    def entity(self) -> str | None:
        return self.project.split("/", 1)[0] if self.project else None

    @property
    def project_name(self) -> str | None:
        return self.project.split("/", 1)[1] if self.project else None

    def describe(self) -> str:
        """Short form: `acme/vision`, `acme/vision/mnist`, `acme/vision ~^mn`, `registry:model/resnet`."""
        where = self.project if self.project else f"registry:{self.registry}"
        if self.collection:
            where += f"/{self.collection}"
        if self.collection_regex:
            where += f" ~{self.collection_regex}"
        return where
