"""The one place `engine web` reaches into the SDK's write path: runs are created, resumed and
finished by the SDK's own statements, and a log batch is stored by the SDK's Writer (binary
COPY, series tails, NOTIFY) on a pooled connection, with the batch id inserted in the same
transaction. Nothing here copies the writer; when its modules move, only these imports do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg.types.json import Jsonb

from engine import clock
from engine.db import boundary, query
from engine.exceptions import LockBusy, NotFound
from engine.names import is_reserved_key
from engine.sdk.buffer import MAX_BATCH_POINTS, Record, Stream, Writer
from engine.sdk.flush import DatabaseTransport
from engine.sdk.run import _check_config, _check_tags, _new_run_id, _Opening, _transition, _transition_params
from engine.sdk.validate import check_key, check_name, parse_project
from engine.settings import Settings

__all__ = ["MAX_BATCH_POINTS", "check_key", "is_reserved_key"]


@dataclass(frozen=True)
class RunRow:
    pk: int
    state: str
    project_id: int


@dataclass(frozen=True)
class Opened:
    id: str
    project: str
    name: str
    user: str | None
    state: str
    created: bool
    config: dict[str, Any]
    tags: list[str]
    step: int
    system_step: int


@dataclass(frozen=True)
class Stored:
    """What a log request stored: `duplicate` when its batch id was stored before."""

    batch_id: str
    duplicate: bool
    points: int
    dropped_rows: list[int]
    step: int
    stop: str | None  # the automation of the run's pending stop request (stop_run), if any
    state: str = "running"  # the run's state when the batch came (running: it was stored)
    run_pk: int = 0
    finished: str | None = None  # with an ending: the run's state afterwards
    changed: bool = False  # with an ending: it ended the run now


def find_run(conn: psycopg.Connection, entity: str, project: str, run_id: str) -> RunRow:
    with boundary():
        row = conn.execute(
            query("web_run"), {"entity": entity, "project": project, "run_id": run_id}
        ).fetchone()
    if row is None:
        raise NotFound(f"no run {run_id!r} in project {entity}/{project}")
    return RunRow(*row)


def run_state(conn: psycopg.Connection, run_pk: int) -> str:
    """A run's state now."""
    with boundary():
        row = conn.execute(query("web_run_state"), {"run_pk": run_pk}).fetchone()
    if row is None:
        raise NotFound(f"run {run_pk} no longer exists")
    return str(row[0])


def run_names(conn: psycopg.Connection, run_pk: int) -> tuple[str, str | None]:
    """A run's display name and user."""
    with boundary():
        row = conn.execute(query("web_run_names"), {"run_pk": run_pk}).fetchone()
    if row is None:
        raise NotFound(f"run {run_pk} no longer exists")
    return row[0], row[1]


def open_run(
    conn: psycopg.Connection,
    *,
    project: str,
    name: str | None,
    user: str | None,
    run_id: str | None,
    config: dict[str, Any] | None,
    tags: list[str] | None,
    resume: bool,
    at: datetime | None = None,
) -> Opened:
    """`engine.init` on the server: create the run (or resume it), one transaction."""
    entity, project_name = parse_project(project)
    if run_id is not None:
        check_name("run id", run_id, pattern=True)
    if name is not None:
        check_name("run name", name)
    config_json = None if config is None else Jsonb(_check_config(config))
    tag_list = None if tags is None else _check_tags(tags)
    existed = False
    if resume and run_id is not None:
        with boundary():
            existed = (
                conn.execute(
                    query("find_run"), {"entity": entity, "project": project_name, "run_id": run_id}
                ).fetchone()
                is not None
            )
    opening = _Opening(
        entity,
        project_name,
        run_id or _new_run_id(),
        name,
        user,
        config,
        config_json,
        tag_list,
        at or clock.now(),
        resume=resume,
        redraw=run_id is None,
    )
    with boundary():
        _, step, system_step = opening.open(conn)
    stored_name, stored_config, stored_tags = opening.stored
    return Opened(
        opening.run_id,
        f"{entity}/{project_name}",
        stored_name,
        user,
        "running",
        not existed,
        stored_config,
        stored_tags,
        step,
        system_step,
    )


def change_state(
    conn: psycopg.Connection,
    run: RunRow,
    from_states: Sequence[str],
    to_state: str,
    exit_code: int | None,
    author: str,
    stopped_by: str | None = None,
) -> bool:
    """A run's state change with its transition row and event (the SDK's statement)."""
    with boundary():
        return _transition(conn, run.pk, from_states, to_state, exit_code, author, clock.now(), stopped_by)


def pending_stop(conn: psycopg.Connection, run_pk: int) -> str | None:
    """The automation of the run's oldest pending stop request (stop_run), or None (the
    statement a flush runs in its transaction)."""
    with boundary():
        row = conn.execute(query("pending_stop_requests"), {"run_pks": [run_pk]}).fetchone()
    return None if row is None else row[1]


@dataclass(frozen=True)
class RunPath:
    """A run as a log request names it."""

    entity: str
    project: str
    run_id: str

    @property
    def label(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"


@dataclass(frozen=True)
class Ending:
    """A run's end that comes with its last batch (`finish` without `stopped`): finished for
    exit code 0, else failed, written in the batch's transaction."""

    exit_code: int
    author: str


# A log batch's row: its time as `clock.to_micros` gives it (None: the request's arrival), its
# step (None: the next one), its keys and their values.
Row = tuple[int | None, int | None, tuple[str, ...], tuple[float, ...]]
SystemRow = tuple[int | None, tuple[str, ...], tuple[float, ...]]

# The ids of metric keys, for every request of this process (keys are never deleted): a
# request interns only keys that no request of the process has seen.
_key_ids: dict[str, int] = {}


def store_batch(
    conn: psycopg.Connection,
    path: RunPath,
    batch_id: str,
    rows: Sequence[Row],
    settings: Settings,
    system: Sequence[SystemRow] = (),
    *,
    clamp: bool = False,
    running: bool = False,
    ending: Ending | None = None,
) -> Stored:
    """Store one log batch exactly once: the rows follow `run.log`'s rules (a missing step is
    the next one, a lower step drops the row; with `clamp`, it is stored at the current step),
    system samples are numbered after the run's, and the batch id commits with the points.
    With `running`, nothing is stored unless the run is running (the answer's `state` says).
    With `ending`, a running run ends in the same transaction (`finished`). A pending stop
    request is read by the flush (its transaction), or with the run's state.

    One transaction holds the run's lock (one batch of a run at a time, across processes):
    its first round trip opens it, takes the lock and reads the run; then the writer's flush
    (new keys and batch id, COPY, series and the batch id with the end, COMMIT)."""
    state = _lock_run(conn, path, batch_id, settings.web_lock_wait)
    try:
        if state is None:
            raise NotFound(f"no run {path.run_id!r} in project {path.entity}/{path.project}")
        run_pk, status, step, system_step, stored_points, stop, next_batch = state
        if stored_points is not None or (running and status != "running"):
            finished, changed = None, False
            if stored_points is not None and ending is not None and status == "running":
                finished, changed = _end(conn, run_pk, ending)  # stored before, not ended: ends now
            _commit(conn)
            return Stored(
                batch_id, stored_points is not None, 0, [], -1, stop, status, run_pk, finished, changed
            )
        DatabaseTransport.prepare_connection(conn)
        # the buffer, without its thread: one flush of exactly this batch (points <= MAX_BATCH_POINTS)
        writer = Writer(
            DatabaseTransport(_Connection(conn), settings.series_tail, key_ids=_key_ids, batch_id=next_batch),
            settings.model_copy(update={"buffer_max_points": MAX_BATCH_POINTS + 1}),
        )
        stream = Stream(run_pk, path.label, step=step, system_step=system_step)
        dropped: list[int] = []
        points = 0
        noted: set[tuple[str, ...]] = set()
        last: tuple[str, ...] | None = None
        for keys in (r[2] for r in rows):
            if keys is not last:  # a batch's rows share their key set's tuple
                noted.add(keys)
                last = keys
        for keys in noted:
            writer.note_keys(list(keys))
        now = clock.now_micros()  # of the points given without a time
        # the usual batch (the SDK's): every row with its time, steps rising past the run's
        timed = not clamp and all(r[0] is not None for r in rows)
        if timed and writer.extend(stream, cast("list[Record]", rows)):
            points, rows = sum(len(r[3]) for r in rows), ()
        for index, (time, given, keys, values) in enumerate(rows):
            if clamp and given is not None and given < stream.step:
                given = stream.step
            if writer.append(stream, now if time is None else time, given, keys, values) is not None:
                dropped.append(index)
            else:
                points += len(values)
        for time, keys, values in system:
            if keys not in noted:
                writer.note_keys(list(keys))
                noted.add(keys)
            writer.append_system(stream, now if time is None else time, keys, values)
            points += len(values)
        params: dict[str, Any] = {"batch_id": batch_id, "points": points}
        closing = query("ingest_batch_insert")
        if ending is not None:
            closing = query("ingest_batch_end")
            params |= _ending_params(run_pk, ending)
        done, closed = writer.finish(stream, (closing, params), timeout=0)
        if not done:  # nothing to store: the batch id alone (and the end)
            with boundary():
                closed = conn.execute(closing, params | {"run_pk": run_pk}).fetchone()
            _commit(conn)
        finished, changed = None, False
        if ending is not None:
            changed = closed is not None
            finished = _to_state(ending) if changed else run_state(conn, run_pk)
        stop = stream.stop if done else stop
        return Stored(batch_id, False, points, dropped, stream.step, stop, status, run_pk, finished, changed)
    finally:
        if (
            not (conn.closed or conn.broken)
            and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        ):
            with boundary():
                conn.execute("ROLLBACK")  # a failed batch: nothing of it stays, nor the run's lock


def _lock_run(
    conn: psycopg.Connection, path: RunPath, batch_id: str, wait: float
) -> tuple[int, str, int, int, int | None, str | None, int] | None:
    """Open the batch's transaction, take the run's lock (held until it ends) and read, once
    the lock is held, the run: (pk, state, step, system step, the batch's points if it was
    stored before, its pending stop request, the flush's batch id), or None when there is no
    such run. One round trip. LockBusy (503) when another request held the lock for `wait`
    seconds. (The batch id is taken after the lock, as the flush would take it: a batch that
    stores nothing leaves a gap in the sequence, as a rolled-back flush does.)"""
    names = {"entity": path.entity, "project": path.project, "run_id": path.run_id}
    state, batch = conn.cursor(), conn.cursor()
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            conn.execute(query("lock_wait"), {"wait": f"{round(wait * 1000)}ms"})
            conn.execute(query("ingest_lock"), names)
            conn.execute(query("lock_wait"), {"wait": "0"})
            state.execute(query("ingest_run_state"), names | {"batch_id": batch_id})
            batch.execute(query("next_ingest_batch"))
    except psycopg.errors.LockNotAvailable:
        # the pipeline stopped at the lock: put the connection's lock wait back before it
        # returns to the pool (and if that fails, the pool drops it as broken)
        with boundary():
            conn.execute("ROLLBACK")
            conn.execute(query("lock_wait"), {"wait": "0"})
        raise LockBusy(
            f"the run's previous log batch is still being stored (waited {wait:g} s for it): send this "
            "batch again (its batch id stores it once)"
        ) from None
    found = state.fetchone()
    next_batch = cast("tuple[int]", batch.fetchone())[0]
    return None if found is None else (*found, next_batch)


def _commit(conn: psycopg.Connection) -> None:
    with boundary():
        conn.execute("COMMIT")


def _to_state(ending: Ending) -> str:
    return "finished" if ending.exit_code == 0 else "failed"


def _ending_params(run_pk: int, ending: Ending) -> dict[str, Any]:
    return _transition_params(run_pk, ("running",), _to_state(ending), ending.exit_code, ending.author)


def _end(conn: psycopg.Connection, run_pk: int, ending: Ending) -> tuple[str, bool]:
    with boundary():
        changed = conn.execute(query("transition_run"), _ending_params(run_pk, ending)).fetchone()
    return (_to_state(ending), True) if changed is not None else (run_state(conn, run_pk), False)


class _Connection:
    """The writer's transport: the request's pooled connection (the pool replaces it if it breaks)."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.url = "the database"

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        yield self.conn

    def close_if_idle(self) -> float | None:
        return None

    def drop(self) -> None:
        pass
