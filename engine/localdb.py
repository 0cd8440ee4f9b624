"""The embedded PostgreSQL + TimescaleDB cluster used whenever ENGINE_DATABASE_URL is unset.

Where its files are. The cluster (`pgdata/`, `postgres.log`, the socket folder `run/`) lives
in the data dir itself whenever the server's user can enter it. PostgreSQL refuses to run as
root, so as root the server runs as the `postgres` user (or as the owner of a cluster that
already exists). When that user cannot enter the data dir — a checkout under /root, whose
mode is 0700 — a new cluster is kept in `/var/lib/engine/<hash of the data dir>/` instead,
and the file `cluster-location` in the data dir names that folder, so that every command
finds it. Nothing of the user's changes owner or mode; a cluster that exists stays where it
is. Two data dirs never share a cluster, and a copied data dir is told apart from a moved one.

The server listens on a Unix socket only (no TCP port to collide with). `up()` is idempotent,
serialised by a lock in the data dir, and recovers from a stale pid file or a crashed server.
The test suite starts its throwaway cluster with this same code.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.exceptions import LocalDatabaseError

DB_NAME = "engine"
SUPERUSER = "engine"
# As root, a new cluster's server runs as this user (the one PostgreSQL's packages create).
SERVER_USER = "postgres"
# Clusters whose data dir the server's user cannot enter live here, one folder per data dir.
ELSEWHERE = Path("/var/lib/engine")
# In the data dir of such a cluster: the folder that holds its files (first line).
MARKER = "cluster-location"
# In that folder: the data dir it belongs to, to tell a copied data dir from a moved one.
_OWNER = "data-dir"
# Unix socket paths are limited to 107 bytes; deep data dirs get a short socket dir in /tmp.
_MAX_SOCKET_DIR = 80


@dataclass(frozen=True)
class Status:
    running: bool
    initialised: bool
    pid: int | None
    data_dir: Path
    home: Path  # where the cluster's files are: the data dir, or the folder its marker names
    socket_dir: Path
    url: str
    server_user: str | None  # who runs the server; None: the invoking user

    @property
    def elsewhere(self) -> bool:
        return self.home != self.data_dir

    @property
    def logfile(self) -> Path:
        return self.home / "postgres.log"

    def describe(self) -> str:
        if not self.initialised:
            return f"not initialised (data dir {self.data_dir}); run `engine db up`"
        if not self.running:
            return "stopped; run `engine db up`"
        return f"running (pid {self.pid}) on socket {self.socket_dir}; url {self.url}"

    def where(self) -> list[str]:
        """Where the files are, and why there: the lines under `describe()` in `engine db status`."""
        files = f"files: {self.home}"
        if self.elsewhere:
            files += (
                f" (the server's user `{self.server_user}` cannot enter the data dir {self.data_dir}; "
                f"{self.data_dir / MARKER} points here)"
            )
        elif self.server_user:
            files += f" (the server runs as `{self.server_user}`: PostgreSQL refuses to run as root)"
        return [files, f"log:   {self.logfile}"]


def _bindir() -> Path:
    """Find the server binaries of the PostgreSQL that pg_config reports (detect, don't assume)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
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


def _first_line(path: Path) -> str | None:
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise LocalDatabaseError(f"cannot read {path}: {exc}") from exc
    return lines[0].strip() if lines else ""


class LocalDatabase:
    """One embedded cluster, belonging to `data_dir`."""

    def __init__(self, data_dir: Path | str, *, fast: bool = False, extra_conf: dict[str, str] | None = None):
        self.data_dir = Path(data_dir).absolute()
        self.marker = self.data_dir / MARKER
        # `fast` trades durability for speed (tests): no fsync, no full-page writes.
        self.fast = fast
        self.extra_conf = extra_conf or {}

    # -- paths and identity -------------------------------------------------------------
    @property
    def home(self) -> Path:
        """The folder with the cluster's files: the data dir, or the one its marker names.

        A cluster in the data dir wins over a marker (a cluster that exists stays where it is)."""
        if (self.data_dir / "pgdata" / "PG_VERSION").exists():
            return self.data_dir
        named = _first_line(self.marker)
        if named is None:
            return self.data_dir
        home = Path(named)
        if not home.is_absolute():
            raise LocalDatabaseError(
                f"{self.marker} must name the folder of the embedded database's files on its first line: "
                "restore it, or delete it to start a new cluster"
            )
        owner = _first_line(home / _OWNER)
        if (
            owner
            and Path(owner).resolve() != self.data_dir.resolve()
            and _first_line(Path(owner) / MARKER) == str(home)
        ):
            # Both data dirs name the same files: one is a copy of the other, and sharing would
            # let `engine db destroy` in one delete the other's data.
            raise LocalDatabaseError(
                f"{self.marker} names the embedded database of {owner} (was {self.data_dir} copied from it?): "
                f"delete {self.marker} to give {self.data_dir} a database of its own, or set ENGINE_DATA_DIR={owner}"
            )
        return home

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def logfile(self) -> Path:
        return self.home / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        own = self.home / "run"
        if len(str(own)) <= _MAX_SOCKET_DIR:
            return own
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"engine-{digest}"

    def url(self, dbname: str = DB_NAME) -> str:
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}"

    def _server_user(self) -> str | None:
        """Who runs the server: None for the invoking user. As root (which PostgreSQL refuses),
        the owner of the cluster when it exists, else `postgres`."""
        if os.geteuid() != 0:
            return None
        try:
            uid = self.pgdata.stat().st_uid
        except FileNotFoundError:
            uid = 0
        if uid != 0:
            with contextlib.suppress(KeyError):
                return pwd.getpwuid(uid).pw_name
        return SERVER_USER

    def _server_ids(self) -> tuple[int, int] | None:
        user = self._server_user()
        if user is None:
            return None
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise LocalDatabaseError(
                f"PostgreSQL refuses to run as root, and there is no `{user}` user to run it: install PostgreSQL "
                "with `scripts/setup` (its package creates that user), or run the engine as a normal user."
            ) from None
        return pw.pw_uid, pw.pw_gid

    def _cmd(self, args: list[str]) -> list[str]:
        user = self._server_user()
        if user:
            self._server_ids()  # a clear error when that user does not exist
            return ["runuser", "-u", user, "--", *args]
        return args

    def _chown(self, path: Path) -> None:
        ids = self._server_ids()
        if ids:
            os.chown(path, *ids)

    def _server_can_enter(self, folder: Path) -> bool:
        """Whether the server's user can enter `folder` (every folder above it must let it through)."""
        if self._server_user() is None:
            return True
        return (
            subprocess.run(
                self._cmd(["test", "-x", str(folder)]), capture_output=True, check=False
            ).returncode
            == 0
        )

    # -- lifecycle ----------------------------------------------------------------------
    def status(self) -> Status:
        home = self.home
        initialised = (home / "pgdata" / "PG_VERSION").exists()
        pid = self._live_pid() if initialised else None
        return Status(
            pid is not None,
            initialised,
            pid,
            self.data_dir,
            home,
            self.socket_dir,
            self.url(),
            self._server_user(),
        )

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

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One `up`/`down` at a time per data dir (training processes may all start it at once)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def up(self) -> Status:
        """Initialise (first time) and start the cluster; harmless when it already runs."""
        with self._lock():
            if not (self.pgdata / "PG_VERSION").exists():
                self._place()
            if self.home != self.data_dir:
                self._claim()
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
                self._cmd(
                    [
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(self.pgdata),
                        "-l",
                        str(self.logfile),
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ]
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                tail = self._log_tail()
                hint = ""
                if "timescaledb" in tail and ("could not access file" in tail or "could not load" in tail):
                    hint = " TimescaleDB is not installed for this PostgreSQL: run `scripts/setup`."
                elif not self._server_can_enter(self.pgdata):
                    hint = f" {self._enter_hint(self.pgdata)}"
                raise LocalDatabaseError(
                    f"could not start the embedded PostgreSQL.{hint}\n{proc.stderr.strip()}\n{tail}"
                )
            self._ensure_database()
            return self.status()

    def down(self, mode: str = "fast") -> bool:
        """Stop the cluster. Returns False when it was not running."""
        if not self.data_dir.exists():
            return False
        with self._lock():
            if not self.status().running:
                self._clear_stale_pidfile()
                return False
            subprocess.run(
                self._cmd(
                    [str(_bindir() / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop"]
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            return True

    def destroy(self) -> None:
        """Stop the cluster and delete its files: the data dir, and the folder elsewhere that it names."""
        try:
            home = self.home
        except LocalDatabaseError:
            home = None  # a marker that names no folder of ours (a copy's): delete the data dir only
        if home is not None:
            socket_dir = self.socket_dir
            self.down("immediate")
            if home != self.data_dir:
                shutil.rmtree(home, ignore_errors=True)
            if socket_dir != home / "run":
                shutil.rmtree(socket_dir, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- internals ----------------------------------------------------------------------
    def _enter_hint(self, folder: Path) -> str:
        return (
            f"The `{self._server_user()}` user, which runs the server, must be able to enter every folder above {folder}: "
            "let it through (chmod o+x on each), or set ENGINE_DATA_DIR to a folder it can enter."
        )

    def _place(self) -> None:
        """Before the first initdb: keep the cluster in the data dir when the server's user can
        enter it, else in a folder of its own under ELSEWHERE, named in the data dir's marker."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.marker.exists() or self._server_can_enter(self.data_dir):
            return
        home = ELSEWHERE / hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
        try:
            if not ELSEWHERE.exists():
                ELSEWHERE.mkdir(parents=True)
                ELSEWHERE.chmod(0o755)  # ours: the server's user must get through, whatever the umask
            home.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise LocalDatabaseError(
                f"cannot create {home} for the embedded database ({exc}). {self._enter_hint(self.data_dir)}"
            ) from exc
        self._chown(home)
        if not self._server_can_enter(home):
            with contextlib.suppress(OSError):
                home.rmdir()  # empty: made just now
            raise LocalDatabaseError(f"cannot keep the embedded database in {home}. {self._enter_hint(home)}")
        text = (
            f"{home}\n"
            f"# The embedded database of this folder keeps its files in the folder above: the `{self._server_user()}`\n"
            "# user, which runs the server (PostgreSQL refuses to run as root), cannot enter this folder.\n"
            "# `engine db status` shows it; `engine db destroy` deletes both. Copy neither this file nor that folder.\n"
        )
        partial = self.marker.with_name(MARKER + ".new")
        partial.write_text(text)
        os.replace(partial, self.marker)  # never half a marker for a concurrent `status`

    def _claim(self) -> None:
        """The cluster's folder names the data dir it belongs to (again, after the data dir moved)."""
        owner_file = self.home / _OWNER
        if owner_file.parent.exists() and _first_line(owner_file) != str(self.data_dir):
            owner_file.write_text(f"{self.data_dir}\n")

    def _initdb(self) -> None:
        home = self.home
        if home != self.data_dir:
            # an empty pgdata left in the data dir by an attempt whose server could not get in
            with contextlib.suppress(OSError):
                (self.data_dir / "pgdata").rmdir()
            if not home.exists():  # the folder the marker names was deleted: make it again
                home.mkdir(mode=0o700, parents=True)
                self._chown(home)
        # initdb as the server's user creates nothing above pgdata: give it pgdata itself
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.pgdata)
        proc = subprocess.run(
            self._cmd(
                [
                    str(_bindir() / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-instructions",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            hint = ""
            if self._server_user() and "Permission denied" in proc.stderr:
                hint = "\n" + self._enter_hint(self.pgdata)
            elif "exists but is not empty" in proc.stderr:
                hint = f"\nAn earlier initdb stopped half-way: delete {self.pgdata} and run `engine db up` again."
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
        from psycopg import sql

        from engine import db
        from engine.exceptions import DatabaseUnavailable

        deadline = time.monotonic() + 30
        while True:
            try:
                with db.connection(self.url("postgres")) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)
                    ).fetchone()
                    if not exists:
                        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
                    return
            except DatabaseUnavailable as exc:  # still starting up
                if time.monotonic() > deadline:
                    raise LocalDatabaseError(
                        f"the embedded server started but does not answer:\n{self._log_tail()}"
                    ) from exc
                time.sleep(0.2)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
