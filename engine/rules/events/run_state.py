"""`run_state` (W&B RUN_STATE): a run enters one of the given states."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field

from engine.rules.base import RuleModel, fail

State = Literal["running", "finished", "failed"]
# W&B users say `crashed`: accepted as `failed` wherever a state is named.
SYNONYMS = {"crashed": "failed"}


def _states(value: Any) -> Any:
    """Refuse `killed` (at its position), map `crashed` to `failed`, dedupe and sort."""
    if not isinstance(value, (list, tuple)):
        return value
    problems = [
        ((i,), "killed runs never trigger an automation: remove `killed`")
        for i, item in enumerate(value)
        if item == "killed"
    ]
    fail("states", problems)
    mapped = [SYNONYMS.get(item, item) if isinstance(item, str) else item for item in value]
    if all(isinstance(item, str) for item in mapped):
        return tuple(sorted(set(mapped)))
    return tuple(mapped)


class RunState(RuleModel):
    wandb_name: ClassVar[str] = "RUN_STATE"
    is_run_event: ClassVar[bool] = True

    type: Literal["run_state"] = Field(description="Event kind.")
    states: Annotated[tuple[State, ...], BeforeValidator(_states)] = Field(
        min_length=1,
        description="States whose entry fires: running (also a run's creation), finished, failed (`crashed` = failed).",
    )

    def describe(self) -> str:
        return "run state in (" + ", ".join(self.states) + ")"
