"""`engine.init()` and the `Run`: states, `log`, `finish`, `log_artifact` (SPEC sections 1, 4).

    with engine.init(project="acme/vision", name="resnet-50", user="alice") as run:
        run.log({"loss": 0.3, "accuracy": 0.9})          # step 0
        run.log({"loss": 0.2}, step=10)                  # step 10
        v = run.log_artifact("mnist", type="dataset", metadata={"rows": 60000})

Every state change writes `runs.state`, a `run_transitions` row and a `run_state` event in
one statement (sql/queries/sdk.sql). Points go through the process's Writer (writer.py).
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
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from engine import clock
from engine.db import query
from engine.exceptions import DatabaseError, DatabaseUnavailable, EngineError, IngestError
from engine.sdk import artifacts, session as sessions
from engine.sdk.system import SamplerThread
from engine.sdk.validate import check_json_object, check_key, check_name, check_step, check_time, parse_project, to_float
from engine.sdk.writer import MAX_BATCH_POINTS, Stream
from engine.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_FINISH_TIMEOUT = 30.0
EXIT_TIMEOUT = 3.0  # for all the runs a script leaves open, together
_ID_ALPHABET = string.ascii_lowercase + string.digits
_FLOAT = float


class StepWarning(UserWarning):
    """A `run.log` call at a step lower than the run's current step was dropped."""


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
    interval = settings.system_metrics_interval if system_metrics_interval is None else float(system_metrics_interval)
    if interval < 0:
        raise ValueError("system_metrics_interval must be >= 0 (0 disables system metrics)")

    session = sessions.acquire(settings)
    try:
        at = clock.now()
        run_id = id
        while True:
            if run_id is None:
                run_id = _new_run_id()
            # the common case, a new run: one statement, no explicit transaction
            created = session.execute(
                query("create_run"),
                {
                    "entity": entity, "project": project_name, "run_id": run_id, "name": name or run_id,
                    "user": user, "config": config_json or Jsonb({}), "tags": tag_list or [], "at": at,
                },
            )
            if created is not None or id is not None:
                break
            run_id = None  # a generated id that exists already: draw another
        if created is not None:
            (run_pk, project_id), steps = created, (-1, -1)
            stored = (name or run_id, config or {}, tag_list or [])
        elif not resume:
            raise ValueError(f"run {run_id!r} already exists in {project}: pass resume=True to continue it")
        else:
            project_id, run_pk, stored, steps = _resume(
                session, entity, project_name, run_id, name, config_json, tag_list, user, at
            )
    except BaseException:
        sessions.release(session)
        raise
    run = Run(
        session, project=project, project_id=project_id, pk=run_pk, id=run_id, name=stored[0], user=user,
        config=stored[1], tags=list(stored[2]), step=steps[0], system_step=steps[1],
    )
    if interval > 0:
        run._start_sampler(interval)
    return run


def _resume(
    session: sessions.Session, entity: str, project_name: str, run_id: str, name: str | None,
    config: Jsonb | None, tags: list[str] | None, user: str | None, at: datetime,
) -> tuple[int, int, tuple[str, dict, list], tuple[int, int]]:
    """Back to `running` (with its event) unless it runs; what was given replaces what was
    stored. Returns project id, run pk, (name, config, tags), and the last (step, sample)."""
    with session.transaction() as conn:
        (project_id,) = conn.execute(query("upsert_project"), {"entity": entity, "project": project_name}).fetchone()
        run_pk, state = conn.execute(query("lock_run"), {"project_id": project_id, "run_id": run_id}).fetchone()
        stored = conn.execute(
            query("update_run_attributes"), {"run_pk": run_pk, "name": name, "config": config, "tags": tags}
        ).fetchone()
        if state != "running":
            _transition(conn, run_pk, ("finished", "failed", "killed"), "running", None, user, at)
        steps = conn.execute(query("run_max_steps"), {"run_pk": run_pk}).fetchone()
    return project_id, run_pk, stored, steps


class Run:
    """A run being logged. Made by `engine.init()`; not constructed directly."""

    def __init__(
        self, session: sessions.Session, *, project: str, project_id: int, pk: int, id: str, name: str,
        user: str | None, config: dict[str, Any], tags: list[str], step: int, system_step: int,
    ):
        self.project = project
        self.project_id = project_id
        self.pk = pk  # runs.id ("run_pk" in the schema)
        self.id = id
        self.name = name
        self.user = user
        self.config = config
        self.tags = tags
        self.state = "running"
        self._session = session
        self._writer = session.writer
        self._stream = Stream(pk, f"{project}/{id}", step=step, system_step=system_step)
        self._keys: set[str] = set()  # keys validated by this run
        self._last_keys: tuple[str, ...] | None = None  # the keys of the last log() call
        self._sampler: SamplerThread | None = None
        self._finished = False
        self._finish_lock = threading.Lock()
        self._pid = os.getpid()
        _active.add(self)

    def __repr__(self) -> str:
        return f"<Run {self.project}/{self.id} name={self.name!r} state={self.state}>"

    @property
    def step(self) -> int:
        """The run's current step (-1 before anything was logged)."""
        return self._stream.step

    # -- logging --------------------------------------------------------------------------
    def log(self, data: Mapping[str, Any], step: int | None = None, time: datetime | None = None) -> None:
        """Log numbers at a step (default: the current step + 1; the first call is step 0).

        Values: int, float, bool (0/1), numpy scalars; anything else is a TypeError naming
        the key, and nothing of the call is logged. A step lower than the current one drops
        the whole call with a StepWarning. `time`: a timezone-aware datetime (default now).
        """
        # The hot path (benchmarked): the same keys as the previous call and float values
        # cost one tuple comparison and one type check per value, and buffer two tuples.
        if self._finished:
            raise IngestError(f"run {self.project}/{self.id} is finished; resume it with engine.init(..., resume=True)")
        try:
            keys = tuple(data)
            values = tuple(data.values())
        except (TypeError, AttributeError):
            raise TypeError(f"run.log takes a dict of metric values, not {type(data).__name__}") from None
        for value in values:
            if type(value) is not _FLOAT:
                values = tuple(v if type(v) is _FLOAT else to_float(k, v) for k, v in zip(keys, values))
                break
        last = self._last_keys
        if keys == last:
            keys = last  # one tuple object for every call with these keys
        else:
            self._check_keys(keys)
        t = clock.now() if time is None else check_time(time)
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
        self._writer.append_system(self._stream, clock.now(), keys, tuple(v for _, v in sample))

    def flush(self, timeout: float | None = DEFAULT_FINISH_TIMEOUT) -> None:
        """Store everything this run logged so far, now (normally the background thread
        does it within ENGINE_FLUSH_INTERVAL). IngestError after `timeout` seconds."""
        self._writer.flush(self._stream, timeout=timeout)

    # -- states ---------------------------------------------------------------------------
    def finish(self, exit_code: int = 0, *, timeout: float = DEFAULT_FINISH_TIMEOUT) -> None:
        """End the run: store what is buffered, then `finished` (exit code 0) or `failed`.

        Waits up to `timeout` seconds for an unreachable database, then raises IngestError
        saying how many points were not stored. A run killed meanwhile stays `killed`.
        Calling it again does nothing.
        """
        if isinstance(exit_code, bool) or not isinstance(exit_code, int):
            raise TypeError(f"exit_code must be an int, not {type(exit_code).__name__}")
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
        _active.discard(self)
        deadline = _time.monotonic() + timeout
        to_state = "finished" if exit_code == 0 else "failed"
        transition = _transition_params(self.pk, ("running",), to_state, exit_code, self.user)
        try:
            if self._sampler is not None:
                self._sampler.stop()
            error: EngineError | None = None
            done = False
            try:
                # the state change commits with the run's last points, when there are any
                done, changed = self._writer.finish(self._stream, query("transition_run"), transition, timeout=timeout)
            except IngestError as exc:
                self._writer.discard(self._stream)
                error = exc
            try:
                if done:
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
        while True:
            try:
                changed = self._session.execute(query("transition_run"), transition)
                self.state = transition["to_state"] if changed else self._stored_state()
                return
            except DatabaseUnavailable:
                if _time.monotonic() + backoff > deadline:
                    raise
                _time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _stored_state(self) -> str:
        return self._session.execute(query("run_state"), {"run_pk": self.pk})[0]

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish(0)
            return
        # an exception leaves the block: store what was logged, mark the run failed, and let
        # the exception go on (a storage problem is reported as a note on it, not instead of it)
        try:
            self.finish(1)
        except EngineError as ingest_problem:
            exc.add_note(f"engine: while marking run {self.project}/{self.id} failed: {ingest_problem}")

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
        with self._session.transaction() as conn:
            return artifacts.create_version(
                conn, project_id=self.project_id, project=self.project, name=name, type=type, metadata=metadata,
                aliases=aliases, tags=tags, digest=digest, run_pk=self.pk, author=self.user, at=clock.now(),
            )

    # -- system metrics -------------------------------------------------------------------
    def _start_sampler(self, interval: float) -> None:
        try:
            self._sampler = SamplerThread(self._log_system, interval)
            self._sampler.start()
        except Exception:  # psutil cannot read this machine: the run goes on without samples
            log.warning("system metrics are not available; the run is logged without them", exc_info=True)
            self._sampler = None


def _transition(
    conn: psycopg.Connection, run_pk: int, from_states: Iterable[str], to_state: str, exit_code: int | None,
    author: str | None, at: datetime,
) -> bool:
    """One state change with its transition row and event; False when the run was not in
    one of `from_states` (nothing written)."""
    params = _transition_params(run_pk, from_states, to_state, exit_code, author, at)
    return conn.execute(query("transition_run"), params).fetchone() is not None


def _transition_params(
    run_pk: int, from_states: Iterable[str], to_state: str, exit_code: int | None, author: str | None,
    at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "run_pk": run_pk, "from_states": list(from_states), "to_state": to_state, "exit_code": exit_code,
        "author": author, "at": at or clock.now(),
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
    """A script that never called finish(): finished, or failed if it died of an exception.
    All of them share EXIT_TIMEOUT seconds, so that an unreachable database cannot hold the
    interpreter's exit for long."""
    exit_code = 1 if _uncaught else 0
    deadline = _time.monotonic() + EXIT_TIMEOUT
    for run in list(_active):
        if run._pid != os.getpid():
            continue  # inherited through fork(): the parent process finishes it
        try:
            run.finish(exit_code, timeout=max(0.0, deadline - _time.monotonic()))
        except Exception as exc:  # at exit there is nobody left to raise to
            print(f"engine: could not finish run {run.project}/{run.id}: {exc}", file=sys.stderr)


# registered after the session module's close_all, so it runs before it (atexit is LIFO)
atexit.register(_finish_open_runs)
