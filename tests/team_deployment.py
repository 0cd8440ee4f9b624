"""A team deployment on this machine, for the tests and `bench/connections.py`.

* `TeamDatabase`: its own PostgreSQL + TimescaleDB cluster (the code of `engine db up`) that
  listens on TCP 127.0.0.1 with password (SCRAM) logins, migrated, with the least-privilege
  roles of `engine/sql/grants.sql`; `login()` makes a login role in one of them and gives its URL.
* `PgBouncer`: Debian's pgbouncer in front of it, in transaction pooling mode, as a subprocess.
* `run_fleet()`: N training processes that start together and log through the SDK.

The fleet is one launcher process that imports the engine once and forks the jobs: each job
is a real process with its own SDK and its own connections, but 120 of them do not each pay
the ~0.6 s of importing the engine (2 cores would need a minute for that alone), and they
all call `engine.init` at the same moment, which is the hard case for a connection limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from engine import db as enginedb
from engine.localdb import DB_NAME, LocalDatabase

GRANTS = enginedb.SQL_DIR / "grants.sql"
ROLES = ("engine_service", "engine_ingest", "engine_reader")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> list[str]:
    """PostgreSQL and PgBouncer refuse to run as root: as root, run them as `postgres`."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _shared_folder(prefix: str) -> Path:
    # pytest's tmp_path is under /tmp/pytest-of-root (0700) when root: the server user could
    # not read its files there.
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


@contextlib.contextmanager
def _pgport(port: int) -> Iterator[None]:
    """LocalDatabase's own connections (its start-up check) name no port: libpq takes PGPORT."""
    before = os.environ.get("PGPORT")
    os.environ["PGPORT"] = str(port)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PGPORT", None)
        else:
            os.environ["PGPORT"] = before


class TeamDatabase:
    """A cluster with `max_connections`, TCP on 127.0.0.1:`port`, SCRAM passwords over TCP (the
    superuser `engine` connects over the Unix socket only, without a password)."""

    def __init__(self, max_connections: int = 100):
        self.max_connections = max_connections
        self.folder = _shared_folder("engine-team-")
        self.port = free_port()
        hba = self.folder / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "host all engine 127.0.0.1/32 reject\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        hba.chmod(0o644)
        self.cluster = LocalDatabase(
            self.folder / "cluster",
            fast=True,
            extra_conf={
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "max_connections": str(max_connections),
                "hba_file": f"'{hba}'",
                "password_encryption": "'scram-sha-256'",
            },
        )

    def start(self) -> TeamDatabase:
        try:
            with _pgport(self.port):
                self.cluster.up()
            with self.admin() as conn:
                enginedb.migrate(conn)
                conn.execute(GRANTS.read_text())
        except BaseException:
            self.stop()  # no cluster left running behind a failed start
            raise
        return self

    def stop(self) -> None:
        with _pgport(self.port):
            self.cluster.destroy()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TeamDatabase:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def superuser_url(self) -> str:
        return make_conninfo(self.cluster.url(DB_NAME), port=str(self.port))

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.superuser_url, autocommit=True)

    def login(self, name: str, password: str, member_of: str | None = None) -> str:
        """A login role (in one of the group roles of engine/sql/grants.sql); its TCP URL."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            if member_of:
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), sql.Identifier(name))
                )
        return self.url(name, password)

    def url(self, user: str, password: str, port: int | None = None) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{port or self.port}/{DB_NAME}"

    def backends(self) -> dict[str, int]:
        """Client connections to the server now, by user (this admin connection excluded)."""
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT usename, count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY usename"
            ).fetchall()
        return {user: n for user, n in rows}


class PgBouncer:
    """Debian's pgbouncer in transaction pooling mode in front of `database`, on its own port.
    `users` are the logins it accepts (name -> password: it authenticates them with SCRAM and
    logs in to the server as them); the first one is also its admin (SHOW POOLS)."""

    def __init__(
        self,
        database: TeamDatabase,
        users: dict[str, str],
        *,
        pool_size: int = 20,
        max_client_conn: int = 200,
    ):
        self.database = database
        self.users = users
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.port = free_port()
        self.folder = _shared_folder("engine-pgbouncer-")
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.log: list[str] = []

    def start(self, timeout: float = 20) -> PgBouncer:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise RuntimeError(
                "pgbouncer is not installed: run scripts/setup (it installs Debian's pgbouncer)"
            )
        auth = self.folder / "userlist.txt"
        auth.write_text("".join(f'"{user}" "{password}"\n' for user, password in self.users.items()))
        ini = self.folder / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{DB_NAME} = host=127.0.0.1 port={self.database.port} dbname={DB_NAME}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {auth}\n"
            f"admin_users = {next(iter(self.users))}\n"
            "pool_mode = transaction\n"
            f"max_client_conn = {self.max_client_conn}\n"
            f"default_pool_size = {self.pool_size}\n"
            f"max_db_connections = {self.pool_size}\n"
            "reserve_pool_size = 0\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        for path in (auth, ini):
            path.chmod(0o644)
        # A session of its own: stop() signals the group, pgbouncer with the runuser that
        # started it (a signal to runuser alone, then its kill, left pgbouncer running)
        self.proc = subprocess.Popen(
            [*_run_as(), binary, str(ini)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        listening = threading.Event()

        def read_log() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                if "process up" in line:
                    listening.set()
            listening.set()  # it exited: start() reports why

        self._reader = threading.Thread(target=read_log, name="pgbouncer-log", daemon=True)
        self._reader.start()
        if not listening.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("pgbouncer did not start:\n" + "\n".join(self.log[-20:]))
        return self

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)  # "safe shutdown": lets transactions finish
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
            with contextlib.suppress(ProcessLookupError):  # whatever of the group is left
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self._reader is not None:
                self._reader.join(5)  # at the end of pgbouncer's log (it exited)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, user: str) -> str:
        return self.database.url(user, self.users[user], port=self.port)

    def pools(self) -> list[dict[str, Any]]:
        """SHOW POOLS on the admin console (simple query protocol only, hence ClientCursor)."""
        admin = next(iter(self.users))
        url = f"postgresql://{admin}:{self.users[admin]}@127.0.0.1:{self.port}/pgbouncer"
        with psycopg.connect(
            url, autocommit=True, prepare_threshold=None, cursor_factory=psycopg.ClientCursor
        ) as conn:
            cur = conn.execute("SHOW POOLS")
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row)) for row in cur.fetchall()]


# -- the training fleet ------------------------------------------------------------------------
_LAUNCHER = r"""
import atexit, json, os, sys, time, traceback
spec = json.loads(sys.argv[1])
import engine
import engine.sdk  # imported once here, inherited by every job

def job(i):
    run = engine.init(project=spec["project"], id="job-%03d" % i)
    for step in range(spec["steps"]):
        run.log({"loss": 1.0 / (step + 1), "acc": step / spec["steps"]}, step=step)
        time.sleep(spec["step_seconds"])  # the training step
    run.finish()

start_r, start_w = os.pipe()
jobs = {}
for i in range(spec["jobs"]):
    pid = os.fork()
    if pid == 0:
        os.close(start_w)
        os.read(start_r, 1)  # end of file once the launcher closes its end: all jobs start together
        code = 0
        try:
            job(i)
        except BaseException as exc:
            # one short line first (a single write: never interleaved with another job's), then the traceback
            sys.stderr.write("job-%03d failed: %s\n" % (i, traceback.format_exception_only(type(exc), exc)[-1].strip()))
            sys.stderr.write(traceback.format_exc())
            code = 1
        try:
            atexit._run_exitfuncs()  # the SDK's exit handler closes its connection
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    jobs[pid] = i
os.close(start_r)
os.close(start_w)
codes = {}
while jobs:
    pid, status = os.wait()
    codes["job-%03d" % jobs.pop(pid)] = os.waitstatus_to_exitcode(status)
print(json.dumps(codes))
"""


@dataclass
class Fleet:
    """What a fleet did: each job's exit code, the launcher's stderr, and peaks seen meanwhile."""

    codes: dict[str, int]
    stderr: str
    seconds: float
    peaks: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return sorted(job for job, code in self.codes.items() if code != 0)

    @property
    def waited(self) -> int:
        """Jobs that found the database refusing them for a while (the SDK warns once per outage)."""
        return len(re.findall(r"cannot write to the database .*; training goes on", self.stderr))

    def reasons(self) -> dict[str, int]:
        """Each error that made jobs fail, with how many jobs it did."""
        found: dict[str, int] = {}
        for error in re.findall(r"^job-\d+ failed: (.*)$", self.stderr, re.MULTILINE):
            found[error[:200]] = found.get(error[:200], 0) + 1
        return found


def run_fleet(
    url: str,
    *,
    jobs: int,
    steps: int,
    step_seconds: float,
    project: str,
    monitor: Any = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> Fleet:
    """Run `jobs` training processes against `url` (ENGINE_DATABASE_URL). `monitor()`, if given,
    is called about ten times a second while they run and returns {name: value}: the peaks of
    each are kept in `Fleet.peaks` (connection counts, for the figures)."""
    spec = {"jobs": jobs, "steps": steps, "step_seconds": step_seconds, "project": project}
    full_env = {
        **os.environ,
        "ENGINE_DATABASE_URL": url,
        "ENGINE_SYSTEM_METRICS_INTERVAL": "0",
        "ENGINE_FLUSH_INTERVAL": "0.2",  # several flushes (transactions) per job
        **(env or {}),
    }
    peaks: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            try:
                for name, value in monitor().items():
                    peaks[name] = max(peaks.get(name, 0), value)
            except psycopg.Error:
                continue  # the server was full for a moment: the next sample counts

    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, json.dumps(spec)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    watcher = threading.Thread(target=watch, name="fleet-monitor", daemon=True) if monitor else None
    if watcher:
        watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the fleet did not finish in {timeout} s:\n{err[-4000:]}") from None
    finally:
        done.set()
        if watcher:
            watcher.join()
    seconds = time.monotonic() - started
    if proc.returncode != 0 or not out.strip():
        raise AssertionError(f"the fleet launcher failed (exit {proc.returncode}):\n{err[-4000:]}")
    return Fleet(codes=json.loads(out.strip().splitlines()[-1]), stderr=err, seconds=seconds, peaks=peaks)


def stored_series(conn: psycopg.Connection, project: str) -> dict[str, dict[str, list[int]]]:
    """run id -> metric -> its steps in the order they were stored (seq)."""
    entity, name = project.split("/")
    rows = conn.execute(
        "SELECT r.run_id, k.key, array_agg(m.step ORDER BY m.seq) FROM metric_points m"
        " JOIN runs r ON r.id = m.run_pk JOIN projects p ON p.id = r.project_id JOIN metric_keys k ON k.id = m.key_id"
        " WHERE p.entity = %s AND p.name = %s GROUP BY r.run_id, k.key",
        (entity, name),
    ).fetchall()
    series: dict[str, dict[str, list[int]]] = {}
    for run_id, key, steps in rows:
        series.setdefault(run_id, {})[key] = steps
    return series
