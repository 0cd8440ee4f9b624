"""`engine.init()` and the `Run`: states, `log`, `finish`, `log_artifact`.

    with engine.init(project="acme/vision", name="resnet-50", user="alice") as run:
        run.log({"loss": 0.3, "accuracy": 0.9})          # step 0
        run.log({"loss": 0.2}, step=10)                  # step 10
        v = run.log_artifact("mnist", type="dataset", metadata={"rows": 60000})

Every state change writes `runs.state`, a `run_transitions` row and a `run_state` event in
one statement (engine/sql/queries/sdk.sql). Points go through the process's Writer (buffer.py).
"""

from __future__ import annotations

import atexit
import functools
import getpass
import logging
import os
import secrets
import string
import sys
import threading
import time as _time
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from engine import clock
from engine.db import is_transient, one_row, query
from engine.exceptions import (
    DatabaseError,
    DatabaseUnavailable,
    EngineError,
    IngestError,
    NotFound,
    RunStopped,
)
from engine.sdk import alerts, artifacts
from engine.sdk import session as sessions
from engine.sdk.buffer import MAX_BATCH_POINTS, Stream
from engine.sdk.system import SamplerThread
from engine.sdk.validate import (
    check_json_object,
    check_key,
    check_name,
    check_step,
    check_time,
    parse_project,
    to_float,
)
from engine.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_FINISH_TIMEOUT = 30.0
EXIT_TIMEOUT = 3.0  # for all the runs a script leaves open, together
_ID_ALPHABET = string.ascii_lowercase + string.digits
_FLOAT = float


class StepWarning(UserWarning):
    """A `run.log` call at a step lower than the run's current step was dropped."""


class ValueWarning(UserWarning):
    """A `run.log` value that is not a number was dropped (the rest of the call was logged)."""


def init(
    project: str,
    name: str | None = None,
    user: str | None = None,
    config: dict[str, Any] | None = None,
    id: str | None = None,
    tags: Iterable[str] | None = None,
    resume: bool = False,
    system_metrics_interval: float | None = None,
) -> Run:
    """Start a run (state `running`) in `project` ("entity/project"), or with `resume=True`
    continue the run `id` (a `failed`/`finished`/`killed` run goes back to `running`).

    `id` defaults to a random 8-character string, `name` to the id, `user` to the login
    name. `system_metrics_interval` (seconds; 0 disables) overrides
    ENGINE_SYSTEM_METRICS_INTERVAL. Use it as a context manager, or call `run.finish()`.
    """
    entity, project_name = parse_project(project)
    if id is not None:
        check_name("run id", id, pattern=True)
    if name is not None:
        check_name("run name", name)
    if user is None:
        user = _login_name()
    elif not isinstance(user, str):
        raise TypeError(f"user must be a string, not {type(user).__name__}")
    config_json = None if config is None else Jsonb(_check_config(config))
    tag_list = None if tags is None else _check_tags(tags)
    settings = get_settings()
    interval = (
        settings.system_metrics_interval
        if system_metrics_interval is None
        else float(system_metrics_interval)
    )
    if interval < 0:
        raise ValueError("system_metrics_interval must be >= 0 (0 disables system metrics)")

    session = sessions.acquire(settings)
    try:
        opening = _Opening(
            entity,
            project_name,
            id or _new_run_id(),
            name,
            user,
            config,
            config_json,
            tag_list,
            clock.now(),
            resume=resume,
            redraw=id is None,
        )
        stream = Stream(None, f"{project}/{opening.run_id}", opening=opening)
        writer = session.writer
        try:
            if writer.unreachable:  # the same outage as another run's: do not wait for it again
                assert writer.last_error is not None  # unreachable means an error was kept
                raise writer.last_error
            writer.open(stream)
        except EngineError as exc:
            if not is_transient(exc):
                raise
            # The database may come back: the run goes on in memory and is created (under
            # the id it has now) before its first points once the database answers.
            opening.redraw = False
            writer.defer(stream, exc)
        stream.label = f"{project}/{opening.run_id}"
    except BaseException:
        sessions.release(session)
        raise
    run = Run(session, opening, stream, project=project, user=user, strict=settings.strict)
    if interval > 0:
        run._start_sampler(interval)
    return run


class _Opening:
    """A run's creation, or its resumption: what `engine.init` was given, run in ONE
    transaction by `open` — by init itself, or by the writer when the database answers later
    (buffer.py). Holds what the database answered (pk, stored name/config/tags)."""

    def __init__(
        self,
        entity: str,
        project: str,
        run_id: str,
        name: str | None,
        user: str | None,
        config: dict | None,
        config_json: Jsonb | None,
        tags: list[str] | None,
        at: datetime,
        *,
        resume: bool,
        redraw: bool,
    ):
        self.entity, self.project, self.run_id, self.name, self.user = entity, project, run_id, name, user
        self.config_json, self.tags, self.at = config_json, tags, at
        self.resume = resume
        self.redraw = redraw  # the id was generated and nobody saw it yet: draw another when taken
        self.pk: int | None = None
        self.project_id: int | None = None
        # name, config and tags as stored (a resumed run's, until the database answers: as given)
        self.stored: tuple[str, dict[str, Any], list[str]] = (name or run_id, config or {}, tags or [])

    def request(self) -> dict[str, Any]:
        """The creation as the body of `POST /api/v1/runs` (the SDK over HTTP). Sent again
        after a lost answer with the same id and time, it returns the run it created."""
        return {
            "project": f"{self.entity}/{self.project}",
            "id": self.run_id,
            "name": self.name,
            "user": self.user,
            "config": None if self.config_json is None else self.config_json.obj,
            "tags": self.tags,
            "resume": self.resume,
            "time": self.at.isoformat(),
        }

    def opened(self, answer: dict[str, Any]) -> None:
        """What the server stored (its answer to `request`)."""
        self.stored = (answer["name"], answer.get("config") or {}, list(answer.get("tags") or []))

    def open(self, conn: psycopg.Connection) -> tuple[int, int, int]:
        """Create (or resume) the run, atomically, on an autocommit connection; (its pk, its
        last stored step and system sample)."""
        # the common case, a new run: one statement, a transaction of its own (one round trip)
        if (created := self._create(conn)) is not None:
            return created
        with conn.transaction():
            return self._open(conn)

    def _create(self, conn: psycopg.Connection) -> tuple[int, int, int] | None:
        created = conn.execute(
            query("create_run"),
            {
                "entity": self.entity,
                "project": self.project,
                "run_id": self.run_id,
                "name": self.name or self.run_id,
                "user": self.user,
                "config": self.config_json or Jsonb({}),
                "tags": self.tags or [],
                "at": self.at,
            },
        ).fetchone()
        if created is None:
            return None
        self.pk, self.project_id = created
        self.stored = (self.name or self.run_id, *self.stored[1:])
        return self.pk, -1, -1

    def _open(self, conn: psycopg.Connection) -> tuple[int, int, int]:
        """The run id exists (or did a moment ago): resume it, recognise our own creation
        whose answer was lost, or draw another generated id."""
        while True:
            if (created := self._create(conn)) is not None:
                return created
            if self.resume:
                return self._resume(conn)
            mine = conn.execute(
                query("find_created_run"),
                {
                    "entity": self.entity,
                    "project": self.project,
                    "run_id": self.run_id,
                    "at": self.at,
                    "user": self.user,
                },
            ).fetchone()
            if mine is not None:  # created by an earlier attempt whose answer was lost
                self.pk, self.project_id = mine
                return self.pk, *one_row(conn.execute(query("run_max_steps"), {"run_pk": self.pk}))
            if not self.redraw:
                raise ValueError(
                    f"run {self.run_id!r} already exists in {self.entity}/{self.project}: pass resume=True to continue it"
                )
            self.run_id = _new_run_id()  # a generated id that exists already: draw another

    def _resume(self, conn: psycopg.Connection) -> tuple[int, int, int]:
        """Back to `running` (with its event) unless it runs; what was given replaces what
        was stored."""
        (self.project_id,) = one_row(
            conn.execute(query("upsert_project"), {"entity": self.entity, "project": self.project})
        )
        self.pk, state = one_row(
            conn.execute(query("lock_run"), {"project_id": self.project_id, "run_id": self.run_id})
        )
        name, config, tags = one_row(
            conn.execute(
                query("update_run_attributes"),
                {"run_pk": self.pk, "name": self.name, "config": self.config_json, "tags": self.tags},
            )
        )
        self.stored = (name, config, list(tags))
        if state != "running":
            _transition(conn, self.pk, ("finished", "failed", "killed"), "running", None, self.user, self.at)
        step, system_step = one_row(conn.execute(query("run_max_steps"), {"run_pk": self.pk}))
        return self.pk, step, system_step


class Run:
    """A run being logged. Made by `engine.init()`; not constructed directly."""

    def __init__(
        self,
        session: sessions.Session,
        opening: _Opening,
        stream: Stream,
        *,
        project: str,
        user: str | None,
        strict: bool,
    ):
        self.project = project
        self.user = user
        self.state = "running"
        self._opening = opening
        self._session = session
        self._writer = session.writer
        self._stream = stream
        self._strict = strict
        self._dropped: set[str] = set()  # keys whose value was not a number (warned once)
        self._keys: set[str] = set()  # keys validated by this run
        self._last_keys: tuple[str, ...] | None = None  # the keys of the last log() call
        self._sampler: SamplerThread | None = None
        self._finished = False
        self._finish_lock = threading.Lock()
        self._pid = os.getpid()
        _active.add(self)

    def __repr__(self) -> str:
        return f"<Run {self.project}/{self.id} name={self.name!r} state={self.state}>"

    # What the database stored; until a run started during an outage is created: what
    # engine.init was given (pk and project_id None).
    @property
    def id(self) -> str:
        return self._opening.run_id

    @property
    def pk(self) -> int | None:
        """The `runs.id` ("run_pk" in the schema)."""
        return self._opening.pk

    @property
    def project_id(self) -> int | None:
        return self._opening.project_id

    @property
    def name(self) -> str:
        return self._opening.stored[0]

    @property
    def config(self) -> dict[str, Any]:
        return self._opening.stored[1]

    @property
    def tags(self) -> list[str]:
        return self._opening.stored[2]

    @property
    def step(self) -> int:
        """The run's current step (-1 before anything was logged)."""
        return self._stream.step

    # -- logging --------------------------------------------------------------------------
    def log(self, data: Mapping[str, Any], step: int | None = None, time: datetime | None = None) -> None:
        """Log numbers at a step (default: the current step + 1; the first call is step 0).

        Values: anything `float()` converts (int, bool as 0/1, numpy scalars and 0-d arrays,
        scalar tensors, Decimal), except text. Any other value is dropped with a ValueWarning
        naming its key (once per key and run) and the rest of the call is logged; with
        ENGINE_STRICT=1 it is a TypeError and nothing of the call is logged. A step lower than
        the current one drops the whole call with a StepWarning. `time`: a timezone-aware
        datetime (default now).
        """
        # The hot path (benchmarked): the same keys as the previous call and float values
        # cost one tuple comparison and one type check per value, and buffer two tuples.
        if self._finished:
            raise IngestError(
                f"run {self.project}/{self.id} is finished; resume it with engine.init(..., resume=True)"
            )
        try:
            keys = tuple(data)
            values = tuple(data.values())
        except (TypeError, AttributeError):
            raise TypeError(f"run.log takes a dict of metric values, not {type(data).__name__}") from None
        for value in values:
            if type(value) is not _FLOAT:
                keys, values = self._numbers(keys, values)
                break
        last = self._last_keys
        if keys == last:
            keys = last  # one tuple object for every call with these keys
        else:
            self._check_keys(keys)
        t = clock.now_micros() if time is None else clock.to_micros(check_time(time))
        if step is not None and (type(step) is not int or step < 0):
            step = check_step(step)
        current = self._writer.append(self._stream, t, step, keys, values)
        if current is not None:
            warnings.warn(
                StepWarning(
                    f"run {self.project}/{self.id}: step {step} is lower than the current step {current}; "
                    f"the call logging {', '.join(keys) or 'nothing'} was dropped"
                ),
                stacklevel=2,
            )
        if self._stream.stop is not None:  # the call's values are kept: stored with the rest
            raise self._stopped()

    def _numbers(
        self, keys: tuple[str, ...], values: tuple[Any, ...]
    ) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """The call's values as floats, without those that are not numbers (a ValueWarning
        per key and run; ENGINE_STRICT=1: the TypeError)."""
        kept: list[tuple[str, float]] = []
        for key, value in zip(keys, values):
            try:
                kept.append((key, value if type(value) is _FLOAT else to_float(key, value)))
            except (TypeError, ValueError) as exc:
                check_key(key)  # a bad key is refused as ever, whatever its value
                if self._strict:
                    raise
                if key not in self._dropped:
                    self._dropped.add(key)
                    warnings.warn(
                        ValueWarning(
                            f"run {self.project}/{self.id}: {exc}; dropped, the rest of the call is logged "
                            "(warned once per key; ENGINE_STRICT=1 makes it an error)"
                        ),
                        stacklevel=3,
                    )
        if len(kept) == len(keys):
            return keys, tuple(v for _, v in kept)
        return tuple(k for k, _ in kept), tuple(v for _, v in kept)

    def _check_keys(self, keys: tuple[str, ...], *, system: bool = False) -> None:
        """Validate keys this run has not seen yet (the writer interns them at its next flush)."""
        if len(keys) > MAX_BATCH_POINTS:
            raise ValueError(f"run.log takes at most {MAX_BATCH_POINTS} keys per call")
        new = [check_key(k, system=system) for k in keys if k not in self._keys]
        if new:
            self._keys.update(new)
            self._writer.note_keys(new)
        if not system:
            self._last_keys = keys

    def _log_system(self, sample: list[tuple[str, float]]) -> None:
        """One sample of the system sampler (keys `system/...`, float values)."""
        if self._finished:
            return
        keys = tuple(k for k, _ in sample)
        self._check_keys(keys, system=True)
        self._writer.append_system(self._stream, clock.now_micros(), keys, tuple(v for _, v in sample))

    def flush(self, timeout: float | None = DEFAULT_FINISH_TIMEOUT) -> None:
        """Store everything this run logged so far, now (normally the background thread
        does it within ENGINE_FLUSH_INTERVAL). IngestError after `timeout` seconds;
        RunStopped (once stored) when an automation asked the run to stop."""
        self._writer.flush(self._stream, timeout=timeout)
        if self._stream.stop is not None:
            raise self._stopped()

    @property
    def stop_requested(self) -> bool:
        """True once a flush learned that an automation's stop_run action asked this run to
        stop; from then on `log` and `flush` raise RunStopped (what they were given is still
        stored)."""
        return self._stream.stop is not None

    def _stopped(self) -> RunStopped:
        assert self._stream.stop is not None
        return RunStopped(self._stream.stop, f"{self.project}/{self.id}")

    # -- states ---------------------------------------------------------------------------
    def finish(self, exit_code: int = 0, *, timeout: float = DEFAULT_FINISH_TIMEOUT) -> None:
        """End the run: store what is buffered, then `finished` (exit code 0) or `failed`.

        Waits up to `timeout` seconds for an unreachable database, then raises IngestError
        saying how many points were not stored. A run killed meanwhile stays `killed`.
        Calling it again does nothing.
        """
        if isinstance(exit_code, bool) or not isinstance(exit_code, int):
            raise TypeError(f"exit_code must be an int, not {type(exit_code).__name__}")
        self._end("finished" if exit_code == 0 else "failed", exit_code, timeout=timeout)

    def _end(
        self, to_state: str, exit_code: int | None, *, timeout: float, stopped_by: str | None = None
    ) -> None:
        """`finish`, into `to_state`: `killed` with `stopped_by` when the run obeys a stop request."""
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
        _active.discard(self)
        deadline = _time.monotonic() + timeout
        transition = _transition_params(
            None, ("running",), to_state, exit_code, self.user, stopped_by=stopped_by
        )  # run_pk: once known
        try:
            if self._sampler is not None:
                self._sampler.stop()
            error: EngineError | None = None
            done, changed = False, None
            try:
                # the state change commits with the run's last points, when there are any
                done, changed = self._writer.finish(
                    self._stream, (query("transition_run"), transition), timeout=timeout
                )
            except IngestError as exc:
                self._writer.discard(self._stream)
                if self._stream.opening is not None or (self.pk is None and self._session.remote is None):
                    raise  # the run was never created: no state to change
                error = exc
            try:
                if isinstance(changed, str):  # over HTTP: the state the server answered
                    self.state = changed
                elif done:
                    self.state = to_state if changed else self._stored_state()
                else:
                    self._change_state(transition, deadline)
            except DatabaseError as exc:
                if error is None:
                    raise
                raise error from exc
            if error is not None:
                raise error
        finally:
            sessions.release(self._session)

    def _change_state(self, transition: dict[str, Any], deadline: float) -> None:
        """The state change on its own, retried while the database is unreachable."""
        backoff = 0.1
        transition["run_pk"] = self.pk
        while True:
            try:
                if self._session.remote is not None:
                    self.state = self._session.remote.finish(
                        self._stream.label,
                        transition["exit_code"],
                        stopped=transition.get("stopped_by") is not None,
                    )
                    return
                changed = self._session.one("transition_run", transition)
                self.state = transition["to_state"] if changed else self._stored_state()
                return
            except DatabaseUnavailable:
                if _time.monotonic() + backoff > deadline:
                    raise
                _time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _stored_state(self) -> str:
        state = self._session.one("run_state", {"run_pk": self.pk})
        if state is None:
            raise NotFound(f"run {self.pk} no longer exists")
        return state["state"]

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish(0)
            return
        # an exception leaves the block: store what was logged, mark the run failed (killed
        # when it obeys a stop request), and let the exception go on (a storage problem is
        # reported as a note on it, not instead of it)
        try:
            self._end_by(exc)
        except EngineError as ingest_problem:
            exc.add_note(f"engine: while ending run {self.project}/{self.id}: {ingest_problem}")

    def _end_by(self, exc: BaseException, timeout: float = DEFAULT_FINISH_TIMEOUT) -> None:
        """End the run after `exc` stopped its code: killed (naming the automation) when it
        is this run's RunStopped, else failed."""
        if isinstance(exc, RunStopped) and self._stream.stop is not None:
            self._end("killed", None, timeout=timeout, stopped_by=self._stream.stop)
        else:
            self.finish(1, timeout=timeout)

    # -- artifacts ------------------------------------------------------------------------
    def log_artifact(
        self,
        name: str,
        type: str,
        metadata: dict[str, Any] | None = None,
        aliases: Iterable[str] = (),
        digest: str | None = None,
        tags: Iterable[str] = (),
    ) -> artifacts.ArtifactVersion:
        """A new version of the artifact collection `name` (created with `type` if new),
        produced by this run; `latest` and `aliases` point to it, `tags` are added."""
        self._writer.ensure_open(self._stream)  # a run started during an outage: created first
        if self._session.remote is not None:
            body = {
                "name": name,
                "type": type,
                "metadata": artifacts.check_metadata(metadata),
                "aliases": [aliases] if isinstance(aliases, str) else list(aliases),
                "tags": [tags] if isinstance(tags, str) else list(tags),
                "digest": digest,
            }
            return self._session.remote.log_artifact(self._stream.label, body)
        assert self.project_id is not None  # ensure_open stored the run, and with it its project
        with self._session.transaction() as conn:
            return artifacts.create_version(
                conn,
                project_id=self.project_id,
                project=self.project,
                name=name,
                type=type,
                metadata=metadata,
                aliases=aliases,
                tags=tags,
                digest=digest,
                run_pk=self.pk,
                author=self.user,
                at=clock.now(),
            )

    # -- alerts ---------------------------------------------------------------------------
    def alert(
        self,
        title: str,
        text: str = "",
        level: str | Any = "info",
        wait_duration: float | timedelta = 60,
    ) -> bool:
        """Raise an alert from training code (W&B's `run.alert`): a `run_alert` event that
        `run_alert` rules route. `level`: info, warn or error (any case; W&B's AlertLevel
        too). An alert whose title this run raised less than `wait_duration` (seconds or a
        timedelta) before is dropped: False. Written at once, not buffered."""
        params = alerts.check(title, text, level, wait_duration)
        self._writer.ensure_open(self._stream)  # a run started during an outage: created first
        if self._session.remote is not None:  # the server checks the repeat the same way
            return self._session.remote.alert(self._stream.label, params)
        with self._session.transaction() as conn:
            return alerts.raise_alert(conn, self.pk, author=self.user, at=clock.now(), **params)

    # -- system metrics -------------------------------------------------------------------
    def _start_sampler(self, interval: float) -> None:
        try:
            self._sampler = SamplerThread(self._log_system, interval)
            self._sampler.start()
        except Exception:  # psutil cannot read this machine: the run goes on without samples
            log.warning("system metrics are not available; the run is logged without them", exc_info=True)
            self._sampler = None


def _transition(
    conn: psycopg.Connection,
    run_pk: int,
    from_states: Iterable[str],
    to_state: str,
    exit_code: int | None,
    author: str | None,
    at: datetime,
    stopped_by: str | None = None,
) -> bool:
    """One state change with its transition row and event; False when the run was not in
    one of `from_states` (nothing written)."""
    params = _transition_params(run_pk, from_states, to_state, exit_code, author, at, stopped_by)
    return conn.execute(query("transition_run"), params).fetchone() is not None


def _transition_params(
    run_pk: int | None,
    from_states: Iterable[str],
    to_state: str,
    exit_code: int | None,
    author: str | None,
    at: datetime | None = None,
    stopped_by: str | None = None,
) -> dict[str, Any]:
    return {
        "run_pk": run_pk,
        "from_states": list(from_states),
        "to_state": to_state,
        "exit_code": exit_code,
        "author": author,
        "at": at or clock.now(),
        "stopped_by": stopped_by,
    }


def _new_run_id() -> str:
    """8 random characters of [a-z0-9] (41 bits, as W&B's run ids)."""
    n = secrets.randbits(41)
    return "".join(_ID_ALPHABET[(n // 36**i) % 36] for i in range(8))


@functools.cache
def _login_name() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return None


def _check_config(config: dict[str, Any]) -> dict[str, Any]:
    return check_json_object("config", config)


def _check_tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        raise TypeError("tags must be a list of strings, not a string")
    return list(dict.fromkeys(check_name("run tag", t) for t in tags))


# -- runs still open when the interpreter exits ------------------------------------------
_active: set[Run] = set()  # strong references: an unfinished run must not vanish unnoticed
_uncaught: list[BaseException] = []
_previous_excepthook = sys.excepthook


def _excepthook(exc_type, exc, tb):  # pragma: no cover - exercised by a script crashing
    _uncaught.append(exc)
    _previous_excepthook(exc_type, exc, tb)


sys.excepthook = _excepthook


def _finish_open_runs() -> None:
    """A script that never called finish(): finished, or failed if it died of an exception
    (killed if it was the run's RunStopped).
    All of them share EXIT_TIMEOUT seconds, so that an unreachable database cannot hold the
    interpreter's exit for long."""
    deadline = _time.monotonic() + EXIT_TIMEOUT
    for run in list(_active):
        if run._pid != os.getpid():
            continue  # inherited through fork(): the parent process finishes it
        try:
            left = max(0.0, deadline - _time.monotonic())
            if _uncaught:
                run._end_by(_uncaught[-1], timeout=left)
            else:
                run.finish(0, timeout=left)
        except Exception as exc:  # at exit there is nobody left to raise to
            print(f"engine: could not finish run {run.project}/{run.id}: {exc}", file=sys.stderr)


# registered after the session module's close_all, so it runs before it (atexit is LIFO)
atexit.register(_finish_open_runs)
