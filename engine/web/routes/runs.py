"""Runs over HTTP: create or resume, log a batch, finish, kill; an artifact version of a run."""

from __future__ import annotations

from typing import Annotated

import psycopg
from fastapi import APIRouter, Request, Response

from engine import clock
from engine.sdk import alerts, artifacts
from engine.web import ingest
from engine.web.auth import Invalid, Principal, access, project_in_body, project_in_path
from engine.web.bodies import OnePassRoute
from engine.web.deps import Conn
from engine.web.models import (
    AlertIn,
    AlertOut,
    ArtifactCreate,
    ArtifactOut,
    Finish,
    LogBatch,
    LogColumns,
    LogOut,
    RunCreate,
    RunDetail,
    RunOut,
    StateOut,
    StopRequested,
    numbers,
)
from engine.web.routes.artifacts import artifact_out

router = APIRouter(tags=["runs"], route_class=OnePassRoute)  # log batches are large
RUN = "/runs/{entity}/{project}/{run_id}"


@router.post(
    "/runs",
    status_code=201,
    responses={200: {"model": RunOut, "description": "Resumed."}},
    dependencies=[access("ingest", project_in_body, body=True)],
)
def create_run(body: RunCreate, conn: Conn, response: Response) -> RunOut:
    """Start a run (201), or with `resume` continue the run `id` (200 when it existed)."""
    with _fields("project", "name", "id", "config", "tags"):
        opened = ingest.open_run(
            conn,
            project=body.project,
            name=body.name,
            user=body.user,
            run_id=body.id,
            config=body.config,
            tags=body.tags,
            resume=body.resume,
            at=body.time,
        )
    if not opened.created:
        response.status_code = 200
    return RunOut(
        id=opened.id,
        project=opened.project,
        name=opened.name,
        user=opened.user,
        state=opened.state,
        config=opened.config,
        tags=opened.tags,
        step=opened.step,
        system_step=opened.system_step,
    )


# stop_requested is left out unless a request is pending (clients test for the key)
@router.post(RUN + "/log", response_model_exclude_none=True)
def log(
    entity: str,
    project: str,
    run_id: str,
    body: LogBatch,
    principal: Annotated[Principal, access("ingest", project_in_path)],
    conn: Conn,
    request: Request,
) -> LogOut:
    """Store a batch of rows, each like one `run.log` call, once: a batch id stored before is
    not stored again (`duplicate`), so a client may retry a batch freely. With `finish`, the
    run then ends as `POST …/finish` with that body would end it (a run's last batch and its
    end in one request)."""
    if body.columns is not None and body.rows:
        raise Invalid(("body", "columns"), "give the rows either as rows or as columns, not both")
    rows: list[ingest.Row] = []
    total = 0
    if body.columns is not None:
        rows = _column_rows(body.columns)
        total = sum(len(row[3]) for row in rows)
    checked: set[tuple[str, ...]] = set()  # rows mostly repeat their keys: each set checked once
    for index, row in enumerate(body.rows):
        keys = tuple(row.values)
        if keys not in checked:
            for key in keys:
                try:
                    ingest.check_key(key)
                except (TypeError, ValueError) as exc:
                    raise Invalid(("body", "rows", index, "values", key), str(exc)) from None
            checked.add(keys)
        total += len(keys)
        rows.append(
            (None if row.time is None else clock.to_micros(row.time), row.step, keys, numbers(row.values))
        )
    system = []
    checked.clear()
    for index, sample in enumerate(body.system):
        keys = tuple(sample.values)
        if keys not in checked:
            for key in keys:
                try:
                    ingest.check_key(key, system=True)
                    if not ingest.is_reserved_key(key):
                        raise ValueError(f"system metric key {key!r} must start with 'system/'")
                except (TypeError, ValueError) as exc:
                    raise Invalid(("body", "system", index, "values", key), str(exc)) from None
            checked.add(keys)
        total += len(keys)
        system.append(
            (None if sample.time is None else clock.to_micros(sample.time), keys, numbers(sample.values))
        )
    if total > ingest.MAX_BATCH_POINTS:
        raise Invalid(("body", "rows"), f"a batch holds at most {ingest.MAX_BATCH_POINTS} points; split it")
    # the usual end (an exit code) is written in the batch's transaction; a stop request's
    # (`stopped`) once the batch is stored, as POST …/finish does it
    ending = None
    if body.finish is not None and not body.finish.stopped:
        ending = ingest.Ending(body.finish.exit_code, principal.author)
    stored = ingest.store_batch(
        conn,
        ingest.RunPath(entity, project, run_id),
        body.batch_id,
        rows,
        request.app.state.settings,
        system,
        running=True,
        ending=ending,
    )
    finished = None
    if stored.state != "running":
        if body.finish is None or not stored.duplicate:
            raise Invalid(
                ("path", "run_id"),
                f"run {run_id!r} is {stored.state}: resume it (POST /runs with resume) to log",
            )
        # a retried last batch whose answer was lost: stored, and the run ended, before
        finished = StateOut(id=run_id, state=stored.state, changed=False)
    elif stored.finished is not None:
        finished = StateOut(id=run_id, state=stored.finished, changed=stored.changed)
    elif body.finish is not None:  # stopped: the run was running when its batch came
        run = ingest.RunRow(stored.run_pk, "running", 0)
        finished = _finish(conn, run_id, run, body.finish, principal)
    return LogOut(
        batch_id=stored.batch_id,
        duplicate=stored.duplicate,
        points=stored.points,
        dropped_rows=stored.dropped_rows,
        step=stored.step,
        stop_requested=_stop(stored.stop),
        finished=finished,
    )


def _column_rows(columns: LogColumns) -> list[ingest.Row]:
    """`columns` as rows (time, step, keys, values), each field checked (422 naming it)."""
    keysets = []
    for index, keys in enumerate(columns.keys):
        for key in keys:
            try:
                ingest.check_key(key)
            except (TypeError, ValueError) as exc:
                raise Invalid(("body", "columns", "keys", index), str(exc)) from None
        if len(set(keys)) != len(keys):
            raise Invalid(("body", "columns", "keys", index), "a key set names a key at most once")
        keysets.append(tuple(keys))
    steps = columns.step
    n = len(steps)
    times: list[int | None]
    if columns.time_us is not None:
        if columns.time is not None:
            raise Invalid(
                ("body", "columns", "time_us"), "give the times either as time or as time_us, not both"
            )
        since = clock.from_unix_micros(0)  # the records' epoch, in the API's microseconds
        field, times = "time_us", [None if t is None else t + since for t in columns.time_us]
    else:
        field = "time"
        times = (
            [None] * n
            if columns.time is None
            else [None if t is None else clock.to_micros(t) for t in columns.time]
        )
    if len(times) != n:
        raise Invalid(("body", "columns", field), f"{len(times)} times for {n} rows (step has {n})")
    chosen = columns.keyset
    one = isinstance(chosen, int) and n > 0  # every row has this key set (the usual batch)
    if isinstance(chosen, int):
        chosen = [chosen] if n else []
    elif len(chosen) != n:
        raise Invalid(("body", "columns", "keyset"), f"{len(chosen)} key sets for {n} rows (step has {n})")
    if chosen and not (min(chosen) >= 0 and max(chosen) < len(keysets)):
        raise Invalid(
            ("body", "columns", "keyset"), f"a key set index is not one of the {len(keysets)} in keys"
        )
    values = numbers(columns.values)
    widths = [len(k) for k in keysets]
    needed = n * widths[chosen[0]] if one else sum(widths[i] for i in chosen)
    if needed != len(values):
        raise Invalid(("body", "columns", "values"), f"{len(values)} values for rows of {needed}")
    if one:
        shared, width = keysets[chosen[0]], widths[chosen[0]]
        # each row's values: a slice of the values, one key set's width after another
        return [
            (t, step, shared, values[at : at + width])
            for t, step, at in zip(times, steps, range(0, n * width, width))
        ]
    rows = []
    at = 0
    for t, step, i in zip(times, steps, chosen):
        width = widths[i]
        rows.append((t, step, keysets[i], values[at : at + width]))
        at += width
    return rows


@router.get(RUN, dependencies=[access("read", project_in_path)])
def get_run(entity: str, project: str, run_id: str, conn: Conn) -> RunDetail:
    """A run: its state, and the stop request (stop_run) it has not obeyed yet."""
    run = ingest.find_run(conn, entity, project, run_id)
    name, user = ingest.run_names(conn, run.pk)
    return RunDetail(
        id=run_id,
        project=f"{entity}/{project}",
        name=name,
        user=user,
        state=run.state,
        stop_requested=_stop(ingest.pending_stop(conn, run.pk)),
    )


def _stop(automation: str | None) -> StopRequested | None:
    return None if automation is None else StopRequested(automation=automation)


@router.post(RUN + "/finish")
def finish(
    entity: str,
    project: str,
    run_id: str,
    body: Finish,
    principal: Annotated[Principal, access("ingest", project_in_path)],
    conn: Conn,
) -> StateOut:
    """End a running run: `finished` (exit code 0) or `failed`; with `stopped`, `killed` by
    its pending stop request (stop_run), whose automation its event names."""
    return _finish(conn, run_id, ingest.find_run(conn, entity, project, run_id), body, principal)


def _finish(
    conn: psycopg.Connection, run_id: str, run: ingest.RunRow, body: Finish, principal: Principal
) -> StateOut:
    to_state = "finished" if body.exit_code == 0 else "failed"
    stopped_by = None
    if body.stopped and run.state == "running":  # not running: a retried request, nothing to do
        stopped_by = ingest.pending_stop(conn, run.pk)
        if stopped_by is None:
            raise Invalid(
                ("body", "stopped"),
                f"run {run_id!r} has no pending stop request: finish it with an exit code",
            )
    if body.stopped:
        to_state = "killed"
    exit_code = None if body.stopped else body.exit_code
    changed = ingest.change_state(conn, run, ("running",), to_state, exit_code, principal.author, stopped_by)
    return StateOut(id=run_id, state=to_state if changed else ingest.run_state(conn, run.pk), changed=changed)


@router.post(RUN + "/alerts")
def alert(
    entity: str,
    project: str,
    run_id: str,
    body: AlertIn,
    conn: Conn,
    principal: Principal = access("ingest", project_in_path),
) -> AlertOut:
    """`run.alert`: a `run_alert` event, unless the run raised the same title less than
    `wait_duration` seconds before (then `sent` is false and nothing is written)."""
    run = ingest.find_run(conn, entity, project, run_id)
    params = alerts.check(body.title, body.text, body.level, body.wait_duration)
    with conn.transaction():
        sent = alerts.raise_alert(conn, run.pk, author=principal.author, at=clock.now(), **params)
    return AlertOut(sent=sent)


@router.post(RUN + "/kill")
def kill(
    entity: str,
    project: str,
    run_id: str,
    principal: Annotated[Principal, access("admin", project_in_path)],
    conn: Conn,
) -> StateOut:
    """Mark a running run `killed` (it never triggers automations)."""
    run = ingest.find_run(conn, entity, project, run_id)
    changed = ingest.change_state(conn, run, ("running",), "killed", None, principal.author)
    return StateOut(id=run_id, state="killed" if changed else run.state, changed=changed)


@router.post(RUN + "/artifacts", status_code=201)
def log_artifact(
    entity: str,
    project: str,
    run_id: str,
    body: ArtifactCreate,
    principal: Annotated[Principal, access("ingest", project_in_path)],
    conn: Conn,
) -> ArtifactOut:
    """A new version of the collection `name`, produced by the run; `latest` and `aliases` point to it."""
    run = ingest.find_run(conn, entity, project, run_id)
    with _fields("name", "type", "metadata", "aliases", "tags", "digest"), conn.transaction():
        version = artifacts.create_version(
            conn,
            project_id=run.project_id,
            project=f"{entity}/{project}",
            name=body.name,
            type=body.type,
            metadata=body.metadata,
            aliases=body.aliases,
            tags=body.tags,
            digest=body.digest,
            run_pk=run.pk,
            author=principal.author,
            at=clock.now(),
        )
    return artifact_out(version)


class _fields:
    """SDK checks raise ValueError/TypeError naming the field in words: 422 on the body."""

    def __init__(self, *names: str):
        self.names = names

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if (
            exc_type is not None
            and issubclass(exc_type, (TypeError, ValueError))
            and not isinstance(exc, Invalid)
        ):
            message = str(exc)
            field = next((n for n in self.names if n in message.lower()), self.names[0])
            raise Invalid(("body", field), message) from exc
