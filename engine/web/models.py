"""Request and response bodies of the HTTP API. Input models forbid unknown keys."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import CoreSchema, core_schema

from engine import clock

# JSON has no NaN or infinities: a value may be written as one of these strings.
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class _NumberSchema:
    """A metric value as JSON writes it: a number, true/false (1.0/0.0, as run.log takes
    them) or one of the _NON_FINITE strings; checked by pydantic-core alone (no Python call
    per value: a log batch holds thousands). `numbers` turns what passed into floats."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.union_schema(
            [
                core_schema.float_schema(strict=True),  # integers too; beyond a double: ±Infinity
                core_schema.literal_schema(list(_NON_FINITE)),
                core_schema.bool_schema(strict=True),
            ],
            mode="left_to_right",
            custom_error_type="number",
            custom_error_message='must be a number, or "NaN", "Infinity" or "-Infinity"',
        )


Number = Annotated[float | str | bool, _NumberSchema]


_NUMBER: TypeAdapter[float | str | bool] = TypeAdapter(Number)


def number(value: Any) -> float:
    """One metric value (decoded JSON) as a float; ValueError saying why it is not one."""
    try:
        checked = _NUMBER.validate_python(value)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"]) from None
    return _NON_FINITE[checked] if isinstance(checked, str) else float(checked)


def numbers(values: dict[str, Number] | list[Number]) -> tuple[float, ...]:
    """The values of a validated `dict[str, Number]` (or list) as floats."""
    found = tuple(values.values() if isinstance(values, dict) else values)
    if all(type(v) is float for v in found):
        return found  # type: ignore[return-value]  # the usual row
    return tuple(_NON_FINITE[v] if isinstance(v, str) else float(v) for v in found)


Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- runs ------------------------------------------------------------------------------------
class RunCreate(Input):
    project: str = Field(description="`entity/project`.", max_length=257)
    name: str | None = Field(None, description="Display name (default: the run id).", max_length=256)
    user: str | None = Field(None, description="Who runs it.", max_length=256)
    id: str | None = Field(None, description="The run id (default: 8 random characters).", max_length=128)
    config: dict[str, Any] | None = Field(None, description="Hyperparameters (a JSON object).")
    tags: list[Annotated[str, Field(max_length=256)]] | None = Field(None, description="Tags of the run.")
    resume: bool = Field(False, description="Continue the run `id` (back to `running`).")
    time: AwareDatetime | None = Field(
        None,
        description="When the run started (default: now). A creation sent again with the same `id`, `time` and "
        "`user` (its answer was lost) returns the run it created instead of refusing the id.",
    )


class RunOut(BaseModel):
    id: str = Field(description="The run id.")
    project: str = Field(description="`entity/project`.")
    name: str = Field(description="Display name.")
    user: str | None = Field(description="Who runs it.")
    state: str = Field(description="running, finished, failed or killed.")
    config: dict[str, Any] = Field({}, description="The run's stored config.")
    tags: list[str] = Field([], description="The run's stored tags.")
    step: int = Field(
        -1, description="The run's last stored step (-1: none): the next row without step is after it."
    )
    system_step: int = Field(-1, description="Index of the run's last stored system sample (-1: none).")


class StopRequested(BaseModel):
    automation: str = Field(description="The automation whose stop_run action asked the run to stop.")


class RunDetail(RunOut):
    stop_requested: StopRequested | None = Field(
        description="The stop request (stop_run) the run has not obeyed yet; null when there is none."
    )


class LogRow(Input):
    step: int | None = Field(None, ge=0, le=2**62, description="Step (default: the run's current step + 1).")
    time: AwareDatetime | None = Field(None, description="When the values were measured (default: now).")
    values: dict[str, Number] = Field(
        description='Metric values: numbers, or "NaN", "Infinity", "-Infinity".'
    )


class SystemRow(Input):
    time: AwareDatetime | None = Field(None, description="When the sample was taken (default: now).")
    values: dict[str, Number] = Field(description="System metric values, keys starting with `system/`.")


class Finish(Input):
    exit_code: int = Field(0, ge=-(2**31), lt=2**31, description="0: finished; anything else: failed.")
    stopped: bool = Field(
        False,
        description="The run obeys its pending stop request (stop_run): it ends killed (exit_code is ignored) "
        "and its event names the automation. 422 when a running run has none.",
    )


class StateOut(BaseModel):
    id: str = Field(description="The run id.")
    state: str = Field(description="The run's state after the request.")
    changed: bool = Field(description="False when the run was not running (nothing changed).")


class LogColumns(Input):
    """The rows of a batch column by column: the same rows as `rows`, without a JSON object
    and a copy of the keys per row (a batch of thousands of rows reads and writes several
    times faster). Row i has step `step[i]`, time `time[i]` (or `time_us[i]`) and the keys `keys[keyset[i]]`
    (`keyset` a single index: every row has those keys); its values are the next
    len(keys) elements of `values`, in the order of its keys."""

    keys: list[list[str]] = Field(description="The rows' sets of metric keys, referred to by index.")
    keyset: list[int] | int = Field(
        0, description="Each row's key set (an index into `keys`), or one for all rows."
    )
    step: list[Annotated[int, Field(ge=0, le=2**62)] | None] = Field(
        description="Each row's step (null: the run's current step + 1); its length is the number of rows."
    )
    time: list[AwareDatetime | None] | None = Field(
        None, description="Each row's time (null, or the list left out: now)."
    )
    time_us: list[Annotated[int, Field(ge=clock.UNIX_MICROS_MIN, le=clock.UNIX_MICROS_MAX)] | None] | None = (
        Field(
            None,
            description="Or each row's time as whole microseconds since the Unix epoch (1970-01-01 UTC), "
            "instead of `time` (the SDK sends these: numbers are cheaper to write and read than ISO 8601).",
        )
    )
    values: list[Number] = Field(
        description='The values, row after row: numbers, or "NaN", "Infinity", "-Infinity".'
    )


class LogBatch(Input):
    batch_id: Name = Field(
        description="Chosen by the client, fresh per batch: a batch stored once is not stored again."
    )
    rows: list[LogRow] = Field(
        [], description="Rows in logging order, each like one `run.log` call (or `columns`)."
    )
    columns: LogColumns | None = Field(
        None, description="The rows column by column instead of `rows` (the SDK sends these)."
    )
    system: list[SystemRow] = Field(
        [],
        description="System metric samples (keys `system/...`), in sampling order, numbered after the run's.",
    )
    finish: Finish | None = Field(
        None,
        description="End the run once the batch is stored, as POST …/finish with this body would "
        "(the answer's `finished`): a run's last batch and its end in one request.",
    )


class LogOut(BaseModel):
    batch_id: str = Field(description="The batch id.")
    duplicate: bool = Field(description="The batch was stored before: nothing was stored now.")
    points: int = Field(description="Points stored now.")
    dropped_rows: list[int] = Field(
        description="Indexes of rows dropped because their step was lower than the run's."
    )
    step: int = Field(description="The run's current step after the batch (-1: none yet; duplicate: -1).")
    stop_requested: StopRequested | None = Field(
        None,
        description="Present when an automation's stop_run action asked the run to stop: the SDK raises "
        "engine.RunStopped and ends the run with POST …/finish {stopped: true}.",
    )
    finished: StateOut | None = Field(None, description="With `finish`: the run's state afterwards.")


# -- automations -----------------------------------------------------------------------------
class RulesText(Input):
    yaml: str = Field(
        description="One or more rules in YAML (documents separated by ---).", max_length=1_000_000
    )
    file: str = Field("<request>", description="The file name errors are reported under.", max_length=256)


class RulesTexts(RulesText):
    files: list[RulesText] = Field(
        [],
        description="More rule texts taken together with `yaml`, each under its own `file` name (errors and the "
        "stored source name it): `engine rules apply` sends one per file it read.",
        max_length=10_000,
    )


class Apply(RulesTexts):
    prune: bool = Field(
        False,
        description="Delete automations your key covers that are not in `yaml` (their history is kept).",
    )
    dry_run: bool = Field(False, description="Only say what would change.")


class Backtest(RulesText):
    since: str = Field("7d", description="How far back: 7d, 24h, or an ISO 8601 time.", max_length=64)


class RuleError(BaseModel):
    line: int | None = Field(description="Line in the YAML text.")
    field: str = Field(description="The field, e.g. event.window.")
    message: str = Field(description="What is wrong.")


class Validation(BaseModel):
    valid: bool
    errors: list[RuleError]


class Outcome(BaseModel):
    name: str
    outcome: Literal["created", "updated", "unchanged", "deleted"]


class Changed(BaseModel):
    changed: bool = Field(description="False when it already was so.")


# -- artifacts -------------------------------------------------------------------------------
class ArtifactCreate(Input):
    name: str = Field(description="The artifact collection.", max_length=256)
    type: str = Field(description="Its type (dataset, model, …).", max_length=256)
    metadata: dict[str, Any] | None = Field(None, description="A JSON object.")
    aliases: list[Annotated[str, Field(max_length=256)]] = Field([], description="Aliases besides `latest`.")
    tags: list[Annotated[str, Field(max_length=256)]] = Field([], description="Tags.")
    digest: str | None = Field(
        None, description="Content digest (default: sha256 of the metadata).", max_length=256
    )


class ArtifactOut(BaseModel):
    id: int
    project: str
    collection: str
    type: str
    version_index: int
    version: str = Field(description="entity/project/collection:vN")
    digest: str
    metadata: dict[str, Any]


class AliasIn(Input):
    alias: str = Field(max_length=256, description="The alias (moved from the version that held it).")


class TagIn(Input):
    tag: str = Field(max_length=256, description="The tag.")


class LinkIn(Input):
    registry: str = Field(max_length=128, description="The registry.")
    collection: str = Field(max_length=256, description="The registry collection.")
    aliases: list[Annotated[str, Field(max_length=256)]] = Field([], description="Aliases besides `latest`.")


class AlertIn(Input):
    title: str = Field(
        max_length=256, description="The alert's title (a repeat within wait_duration is dropped)."
    )
    text: str = Field("", max_length=10_000, description="Its text.")
    level: Literal["info", "warn", "error", "INFO", "WARN", "ERROR"] = Field("info", description="Its level.")
    wait_duration: float = Field(
        60, ge=0, le=7 * 86400, description="Seconds in which an alert of the same title and run is dropped."
    )


class AlertOut(BaseModel):
    sent: bool = Field(
        description="False: dropped, the run raised this title less than wait_duration before."
    )


class LinkOut(BaseModel):
    id: int
    registry: str
    collection: str
    version_index: int
    version: str = Field(description="registry/collection:vN")
    artifact: ArtifactOut


# -- silences --------------------------------------------------------------------------------
class SilenceCreate(Input):
    automation: Name | None = Field(None, description="Silence this automation (by name).")
    project: str | None = Field(
        None, max_length=257, description="Or every automation's triggers in this project (`entity/project`)."
    )
    duration: str | None = Field(None, max_length=32, description="How long, from now: 30m, 2h, 1d.")
    until: AwareDatetime | None = Field(None, description="Or until then (ISO 8601 with its zone).")
    reason: str = Field(
        min_length=1, max_length=1000, description="Why: shown with every trigger it silences."
    )


class SilenceOut(BaseModel):
    id: int = Field(description="The silence's id (`engine silence end ID`).")
    ends_at: datetime = Field(description="When it ends (or ended).")


# -- history ---------------------------------------------------------------------------------
class Page(BaseModel):
    rows: list[dict[str, Any]] = Field(description="Rows, newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str
    checked_at: datetime
