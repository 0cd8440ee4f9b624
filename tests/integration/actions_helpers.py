"""Helpers of the actions tests: automations and triggers written with SQL (as the evaluator
would), a real HTTP receiver on 127.0.0.1, and a loop that runs the dispatcher until the
deliveries settle."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from engine.actions.dispatcher import Dispatcher
from engine.actions.outbox import enqueue

FINAL = ("succeeded", "failed", "skipped")


# -- database ------------------------------------------------------------------------------
def make_automation(conn: psycopg.Connection, name: str, actions: list[dict], event: dict | None = None, scope: dict | None = None) -> int:
    rule = {
        "name": name,
        "enabled": True,
        "scope": scope or {"project": "acme/vision"},
        "event": event
        or {"type": "run_metric_threshold", "metric": "accuracy", "window": 3, "aggregation": "avg", "operator": ">", "threshold": 0.6},
        # A rule holds one action; a trigger's deliveries come from the list given to `fire`.
        "action": actions[0] if actions else {"type": "no_op"},
    }
    digest = hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()
    return conn.execute(
        "INSERT INTO automations (name, rule, rule_hash, condition_hash) VALUES (%s, %s, %s, %s) RETURNING id",
        (name, Jsonb(rule), digest, digest),
    ).fetchone()[0]


def make_run(conn: psycopg.Connection, run_id: str = "r1", name: str = "resnet-50", user: str = "alice") -> int:
    project = conn.execute(
        "INSERT INTO projects (entity, name) VALUES ('acme', 'vision') ON CONFLICT (entity, name) DO UPDATE SET name = EXCLUDED.name RETURNING id"
    ).fetchone()[0]
    return conn.execute(
        "INSERT INTO runs (project_id, run_id, name, user_name, state) VALUES (%s, %s, %s, %s, 'running') RETURNING id",
        (project, run_id, name, user),
    ).fetchone()[0]


def fire(
    conn: psycopg.Connection,
    automation_id: int,
    actions: list[dict],
    *,
    run_pk: int | None = None,
    values: Iterable[float] = (0.5, 0.66, 0.7),
    step: int = 7,
    details: dict | None = None,
) -> tuple[int, list[uuid.UUID]]:
    """A metric trigger and its deliveries, in one transaction, as the evaluator writes them."""
    values = list(values)
    with conn.transaction():
        trigger_id = conn.execute(
            """INSERT INTO triggers (automation_id, automation_version, event_type, cause, run_pk, metric, step,
                                     value_time, value, window_values, details)
               VALUES (%s, 1, 'run_metric_threshold', %s, %s, 'accuracy', %s, now(), %s, %s, %s) RETURNING id""",
            (automation_id, f"test:{uuid.uuid4()}", run_pk, step, sum(values) / len(values), values, Jsonb(details or {})),
        ).fetchone()[0]
        ids = enqueue(conn, trigger_id=trigger_id, automation_id=automation_id, actions=actions)
    return trigger_id, ids


def delivery(conn: psycopg.Connection, delivery_id: uuid.UUID) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM deliveries WHERE id = %s", (delivery_id,))
    names = [c.name for c in cur.description]
    return dict(zip(names, cur.fetchone()))


def attempts(conn: psycopg.Connection, delivery_id: uuid.UUID) -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM delivery_attempts WHERE delivery_id = %s ORDER BY attempt", (delivery_id,))
    names = [c.name for c in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def history(conn: psycopg.Connection, trigger_id: int) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM automation_history WHERE trigger_id = %s", (trigger_id,))
    names = [c.name for c in cur.description]
    return dict(zip(names, cur.fetchone()))


def settle(dispatcher: Dispatcher, conn: psycopg.Connection, ids: Iterable[uuid.UUID], timeout: float = 20.0) -> None:
    """Run the dispatcher until every delivery in `ids` is final (retries included)."""
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        statuses = [delivery(conn, i)["status"] for i in ids]
        if all(s in FINAL for s in statuses):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries not settled after {timeout} s: {statuses}")
        if not dispatcher.run_once():
            time.sleep(0.02)


# -- HTTP receiver -------------------------------------------------------------------------
@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # seconds to wait before answering (released early by Receiver.stop)


Responder = Callable[[Received], Reply]


class Receiver:
    """A real HTTP server on 127.0.0.1 (or `host`, e.g. ::1) that records requests and answers
    from a script: the replies given are used in order, the last one repeats. Or give a function."""

    def __init__(self, *replies: Reply | Responder, port: int = 0, host: str = "127.0.0.1"):
        self.requests: list[Received] = []
        self._replies = list(replies) or [Reply()]
        self._lock = threading.Lock()
        self.release = threading.Event()
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Received(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                reply = receiver._next(request)
                if reply.hang:
                    receiver.release.wait(reply.hang)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                self.close_connection = True

            do_POST = do_GET = _handle

        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _next(self, request: Received) -> Reply:
        with self._lock:
            self.requests.append(request)
            item = self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]
        with self.arrived:
            self.arrived.notify_all()
        return item(request) if callable(item) else item

    def url(self, path: str = "/hook") -> str:
        host = self._server.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
        return self.requests

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def free_port() -> int:
    """A port nothing listens on (for "endpoint down")."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
