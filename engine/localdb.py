"""The embedded PostgreSQL + TimescaleDB cluster used whenever ENGINE_DATABASE_URL is unset.

The cluster lives in `<data_dir>/pgdata` and listens on a Unix socket only (no TCP port to
collide with). As root, the server runs as the `postgres` user, since PostgreSQL refuses
to run as root. `up()` is idempotent and recovers from a stale pid file or a crashed server.
The test suite starts its throwaway cluster with this same code.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from engine.exceptions import LocalDatabaseError

DB_NAME = "engine"
SUPERUSER = "engine"
# Unix socket paths are limited to 107 bytes; deep data dirs get a short socket dir in /tmp.
_MAX_SOCKET_DIR = 80


@dataclass(frozen=True)
class Status:
    running: bool
    initialised: bool
    pid: int | None
    data_dir: Path
    socket_dir: Path
    url: str

    def describe(self) -> str:
        if not self.initialised:
            return f"not initialised (data dir {self.data_dir}); run `engine db up`"
        if not self.running:
            return f"stopped (data dir {self.data_dir}); run `engine db up`"
        return f"running (pid {self.pid}) on socket {self.socket_dir}; url {self.url}"


def _bindir() -> Path:
    """Find the server binaries of the PostgreSQL that pg_config reports (detect, don't assume)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for c in candidates:
        if (c / "pg_ctl").exists() and (c / "initdb").exists():
            return c
    raise LocalDatabaseError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: run `scripts/setup`, "
        "or set ENGINE_DATABASE_URL to a TimescaleDB you already have."
    )


class LocalDatabase:
    """One embedded cluster under `data_dir`."""

    def __init__(self, data_dir: Path | str, *, fast: bool = False, extra_conf: dict[str, str] | None = None):
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.logfile = self.data_dir / "postgres.log"
        # `fast` trades durability for speed (tests): no fsync, no full-page writes.
        self.fast = fast
        self.extra_conf = extra_conf or {}

    # -- paths and identity -------------------------------------------------------------
    @property
    def socket_dir(self) -> Path:
        own = self.data_dir / "run"
        if len(str(own)) <= _MAX_SOCKET_DIR:
            return own
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"engine-{digest}"

    def url(self, dbname: str = DB_NAME) -> str:
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}"

    @staticmethod
    def _run_as() -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def _cmd(self, args: list[str]) -> list[str]:
        user = self._run_as()
        return ["runuser", "-u", user, "--", *args] if user else args

    def _chown(self, path: Path) -> None:
        user = self._run_as()
        if user:
            pw = pwd.getpwnam(user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    # -- lifecycle ----------------------------------------------------------------------
    def status(self) -> Status:
        initialised = (self.pgdata / "PG_VERSION").exists()
        pid = self._live_pid() if initialised else None
        return Status(pid is not None, initialised, pid, self.data_dir, self.socket_dir, self.url())

    def _live_pid(self, pidfile: Path | None = None) -> int | None:
        """The pid named on the first line of `pidfile` (postmaster.pid by default), if alive."""
        pidfile = pidfile or self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        # a zombie or a recycled pid is not our postmaster
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"postgres" in cmdline or b"postmaster" in cmdline else None

    def up(self) -> Status:
        """Initialise (first time) and start the cluster; harmless when it already runs."""
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._write_conf()
        current = self.status()
        if current.running:
            return current
        self._clear_stale_pidfile()
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.socket_dir)
        self.logfile.touch(exist_ok=True)
        self._chown(self.logfile)
        bindir = _bindir()
        proc = subprocess.run(
            self._cmd([str(bindir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "60", "start"]),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            tail = self._log_tail()
            hint = ""
            if "timescaledb" in tail and ("could not access file" in tail or "could not load" in tail):
                hint = " TimescaleDB is not installed for this PostgreSQL: run `scripts/setup`."
            raise LocalDatabaseError(f"could not start the embedded PostgreSQL.{hint}\n{proc.stderr.strip()}\n{tail}")
        self._ensure_database()
        return self.status()

    def down(self, mode: str = "fast") -> bool:
        """Stop the cluster. Returns False when it was not running."""
        if not self.status().running:
            self._clear_stale_pidfile()
            return False
        subprocess.run(
            self._cmd([str(_bindir() / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop"]),
            capture_output=True,
            text=True,
        )
        return True

    def destroy(self) -> None:
        self.down("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.socket_dir != self.data_dir / "run":
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- internals ----------------------------------------------------------------------
    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as():
            # the postgres user must be able to reach and own its folders
            self.data_dir.chmod(0o755)
            self._chown(self.data_dir)
        proc = subprocess.run(
            self._cmd(
                [str(_bindir() / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust",
                 "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"]
            ),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            hint = ""
            if self._run_as() and "Permission denied" in proc.stderr:
                # typical as root with the project under /root (0700): postgres cannot get in
                hint = (f"\nThe `{self._run_as()}` user must be able to enter every folder above {self.data_dir}: "
                        "allow it (chmod o+x on each) or set ENGINE_DATA_DIR to a folder it can reach, such as one in /tmp.")
            raise LocalDatabaseError(f"initdb failed in {self.pgdata}:\n{proc.stderr.strip()}{hint}")

    def _write_conf(self) -> None:
        conf = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "shared_preload_libraries": "'timescaledb'",
            "timescaledb.telemetry_level": "off",
            "max_connections": "200",
            "shared_buffers": "256MB",
            "max_locks_per_transaction": "256",  # hypertables with many chunks
            "log_min_messages": "warning",
        }
        if self.fast:
            conf |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        conf |= self.extra_conf
        text = "# written by engine.localdb on every `up`; edit postgresql.conf for your own settings\n"
        text += "".join(f"{k} = {v}\n" for k, v in conf.items())
        path = self.pgdata / "engine.conf"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            self._chown(path)
        main = self.pgdata / "postgresql.conf"
        include = "include_if_exists = 'engine.conf'\n"
        if include not in main.read_text():
            with main.open("a") as f:
                f.write("\n" + include)

    def _clear_stale_pidfile(self) -> None:
        # The socket lock files too: after a crash they name the dead postmaster, and where
        # init reaps orphans lazily (containers) that pid lingers as a zombie, which the
        # server's own check takes for a live postmaster ("lock file ... already exists").
        stale = [self.pgdata / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*.lock")]
        for pidfile in stale:
            if pidfile.exists() and self._live_pid(pidfile) is None:
                pidfile.unlink(missing_ok=True)

    def _ensure_database(self) -> None:
        import psycopg
        from psycopg import sql

        from engine import db
        from engine.exceptions import DatabaseUnavailable

        deadline = time.monotonic() + 30
        while True:
            try:
                with db.connect(self.url("postgres"), autocommit=True) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
                    if not exists:
                        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
                    return
            except (psycopg.OperationalError, DatabaseUnavailable):
                if time.monotonic() > deadline:
                    raise LocalDatabaseError(f"the embedded server started but does not answer:\n{self._log_tail()}")
                time.sleep(0.2)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
