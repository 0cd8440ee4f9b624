"""API keys of `engine web`: generation, storage (a hash only), verification, scopes.

A key is `eng_` and 256 random bits (43 URL-safe characters). Only its sha256 is stored,
with its first characters (`prefix`) to find the row; the presented key's hash is compared
with the stored one in constant time (`hmac.compare_digest`).

    key, stored = create(conn, "trainer", role="ingest", scopes=["acme/*"], expires_in=timedelta(days=90))
    found = authenticate(conn, key)          # KeyRefused (with the reason) unless valid
    allows(found.role, "ingest") and covers(found.scopes, Place("project", "acme/vision"))

Roles: `ingest` (write runs, points, artifacts), `read` (read everything), `admin` (both, and
manage automations, deliveries, kill runs). Scope patterns: `*`, `entity/project`,
`entity/*`, `registry:NAME`, `registry:*`. The database's `api_scope_covers` function
(migration 0010) applies the same patterns in queries; keep the two in sync.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from engine import clock
from engine.db import boundary, one, query, rows
from engine.exceptions import KeyRefused, NotFound
from engine.names import NAME_PART

PREFIX = "eng_"
PREFIX_LENGTH = len(PREFIX) + 8  # what is stored in clear to find a key's row: 48 of its 256 bits
_KEY = re.compile(r"eng_[A-Za-z0-9_-]{43}")
KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")

Role = Literal["ingest", "read", "admin"]
ROLES: tuple[Role, ...] = ("ingest", "read", "admin")
# The roles that may do what a route needs: admin may do everything the others may.
_GRANTED_BY: dict[str, frozenset[str]] = {
    "ingest": frozenset({"ingest", "admin"}),
    "read": frozenset({"read", "admin"}),
    "admin": frozenset({"admin"}),
}
TOUCH_EVERY = 60.0  # seconds: last_used_at is written at most this often per key


@dataclass(frozen=True)
class Place:
    """What a request acts on: a project (`entity/project`) or a registry (`NAME`)."""

    kind: Literal["project", "registry"]
    name: str

    def __str__(self) -> str:
        return self.name if self.kind == "project" else f"registry:{self.name}"


@dataclass(frozen=True)
class ApiKey:
    """A stored key, as `engine keys list` shows it (never the key nor its hash)."""

    id: int
    name: str
    role: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def as_row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


# -- keys ----------------------------------------------------------------------------------
def generate() -> str:
    """A new key: `eng_` + 256 random bits, URL-safe base64 (43 characters)."""
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """The sha256 (hex) stored for a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def well_formed(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


# -- scopes --------------------------------------------------------------------------------
def check_scope(pattern: str) -> str:
    """A scope pattern as given to `engine keys create --scope`, or ValueError saying why."""
    if pattern == "*":
        return pattern
    if pattern.startswith("registry:"):
        name = pattern.removeprefix("registry:")
        if name == "*" or NAME_PART.fullmatch(name):
            return pattern
    else:
        entity, _, project = pattern.partition("/")
        if NAME_PART.fullmatch(entity) and (project == "*" or NAME_PART.fullmatch(project)):
            return pattern
    raise ValueError(
        f"scope {pattern!r} is not a scope pattern: write entity/project, entity/*, registry:NAME, registry:* or *"
    )


def covers(scopes: tuple[str, ...] | list[str], place: Place) -> bool:
    """Whether one of the patterns covers the place (same rule as SQL's api_scope_covers)."""
    for pattern in scopes:
        if pattern == "*":
            return True
        if place.kind == "project":
            if pattern == place.name or pattern == place.name.split("/", 1)[0] + "/*":
                return True
        elif pattern in (f"registry:{place.name}", "registry:*"):
            return True
    return False


def allows(role: str, needed: str) -> bool:
    """Whether a key of `role` may do what needs `needed`."""
    return role in _GRANTED_BY[needed]


# -- storage -------------------------------------------------------------------------------
def create(
    conn: psycopg.Connection,
    name: str,
    *,
    role: str,
    scopes: list[str],
    expires_in: timedelta | None = None,
) -> tuple[str, ApiKey]:
    """Store a new key; returns (the key, to show once, and the stored record)."""
    if not KEY_NAME.fullmatch(name):
        raise ValueError(f"key name {name!r}: 1-128 characters, letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise ValueError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    if not scopes:
        raise ValueError("give at least one --scope (entity/project, entity/*, registry:NAME, registry:*, *)")
    patterns = list(dict.fromkeys(check_scope(s) for s in scopes))
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("the expiry must be in the future")
    key = generate()
    now = clock.now()
    params = {
        "name": name,
        "prefix": key[:PREFIX_LENGTH],
        "hash": digest(key),
        "role": role,
        "scopes": patterns,
        "now": now,
        "expires_at": None if expires_in is None else now + expires_in,
    }
    with boundary(), conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query("key_create"), params).fetchone()
    if row is None:
        raise ValueError(f"a key named {name!r} exists already (names are not reused, even once revoked)")
    return key, _record(row)


def list_keys(conn: psycopg.Connection) -> list[ApiKey]:
    return [_record(r) for r in rows(conn, "key_list")]


def revoke(conn: psycopg.Connection, name: str) -> bool:
    """Revoke a key: refused from the next check in the database on (`Verified`: within a
    web process's key cache). False: it was revoked already."""
    with boundary(), conn.transaction():
        if conn.execute(query("key_revoke"), {"name": name, "now": clock.now()}).fetchone():
            return True
        if conn.execute(query("key_exists"), {"name": name}).fetchone() is None:
            raise NotFound(f"no API key named {name!r} (see `engine keys list`)")
    return False


def authenticate(conn: psycopg.Connection, presented: str) -> ApiKey:
    """The valid key `presented` is, or KeyRefused saying why (never quoting the key)."""
    if not well_formed(presented):
        raise KeyRefused("malformed API key: expected `Authorization: Bearer eng_…`")
    expected = digest(presented)
    found = None
    for row in rows(
        conn, "key_by_prefix", {"prefix": presented[:PREFIX_LENGTH]}
    ):  # every candidate is compared, so the time does not say which matched
        if hmac.compare_digest(row["hash"], expected):
            found = row
    if found is None:
        raise KeyRefused("unknown API key")
    return _valid(_record(found))


class Verified:
    """The keys this process found valid in the database a moment ago, by their digest: a
    request that presents one within `max_age` seconds is decided without a database round
    trip (a third of a small request's time). Only found keys are kept, never a refusal.

    What it costs: a key revoked in the database is still taken by this process until its
    entry is `max_age` old (each process of each host keeps its own). An expiry is checked
    on every use, so an expired key is refused at once. `max_age` 0 keeps nothing."""

    def __init__(self, max_age: float, *, size: int = 4096, monotonic: Callable[[], float] = time.monotonic):
        self.max_age = max_age
        self._size = size
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._found: dict[str, tuple[ApiKey, float]] = {}

    def get(self, presented: str) -> ApiKey | None:
        """The key `presented` is, if it was found valid less than `max_age` ago and has not
        expired since; None: ask the database (`authenticate`)."""
        if self.max_age <= 0:
            return None
        with self._lock:
            found = self._found.get(digest(presented))
        if found is None or self._monotonic() - found[1] >= self.max_age:
            return None
        key = found[0]
        return key if key.expires_at is None or key.expires_at > clock.now() else None

    def remember(self, presented: str, key: ApiKey) -> None:
        """`authenticate` found `presented` valid just now."""
        if self.max_age <= 0:
            return
        now, found = self._monotonic(), digest(presented)
        with self._lock:
            if len(self._found) >= self._size:  # the stale ones go first, else the oldest
                self._found = {d: e for d, e in self._found.items() if now - e[1] < self.max_age}
                while len(self._found) >= self._size:
                    del self._found[next(iter(self._found))]
            self._found.pop(found, None)  # re-inserted last: the newest
            self._found[found] = (key, now)


def by_id(conn: psycopg.Connection, key_id: int) -> ApiKey:
    """The valid key of this id (a web console session), or KeyRefused saying why."""
    row = one(conn, "key_by_id", {"id": key_id})
    if row is None:
        raise KeyRefused("unknown API key")
    return _valid(_record(row))


def _valid(key: ApiKey) -> ApiKey:
    if key.revoked_at is not None:
        raise KeyRefused(f"API key {key.name!r} was revoked")
    if key.expires_at is not None and key.expires_at <= clock.now():
        raise KeyRefused(f"API key {key.name!r} expired")
    return key


class _Touched:
    """When this process last wrote each key's last_used_at (the SQL re-checks it across processes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at: dict[int, float] = {}

    def pending(self, key_id: int) -> bool:
        """Whether `due` would say so (without taking the turn)."""
        with self._lock:
            return time.monotonic() - self._at.get(key_id, -TOUCH_EVERY) >= TOUCH_EVERY

    def due(self, key_id: int) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._at.get(key_id, -TOUCH_EVERY) < TOUCH_EVERY:
                return False
            self._at[key_id] = now
            return True


_touched = _Touched()


def touch_pending(key: ApiKey) -> bool:
    """Whether the key's next request writes its last use (`touch`)."""
    return _touched.pending(key.id)


def touch(conn: psycopg.Connection, key: ApiKey) -> None:
    """Record the key's use: at most once a minute per key."""
    if _touched.due(key.id):
        with boundary():
            conn.execute(query("key_touch"), {"id": key.id, "now": clock.now()})


def _record(row: dict[str, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        scopes=tuple(row["scopes"]),
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )
