"""Prometheus metrics of `engine serve --metrics-port PORT` (prometheus-client).

Two kinds, on one registry per service:

* **this process** (counters and a histogram updated by `EvaluationLoop.run` after each tick):
  `engine_ticks_total{outcome}` (ok | database_unavailable | error),
  `engine_tick_duration_seconds`, `engine_tick_triggers_fired_total`,
  `engine_automation_evaluation_failures_total{automation}`;
* **the database** (read at each scrape by a custom collector, so they are exact whatever
  the number of services and survive restarts):
  `engine_triggers_total{automation}`, `engine_automations_enabled`,
  `engine_automations_failing`, `engine_deliveries{status}`, `engine_delivery_queue_depth`
  (pending), `engine_delivery_oldest_pending_age_seconds` (pending or sending), and
  `engine_database_up` (0 when the scrape could not read them: the others are then absent).

    metrics = ServiceMetrics(database)      # the service's db.Database (its "metrics" share)
    metrics.serve(9108)                     # http://host:9108/metrics
    metrics.record_tick(result, seconds)    # after each Evaluator.tick()
    metrics.close()

`NO_METRICS` has the same methods and does nothing (metrics off, the default).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine import db
from engine.exceptions import DatabaseError

if TYPE_CHECKING:
    from engine.evaluation import TickResult

log = logging.getLogger(__name__)

SCRAPE_STATEMENT_TIMEOUT_MS = 5_000  # a scrape must never hang on a busy database
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


SHARE = "metrics"  # the scrape's share of the service's pool (one connection)


class DatabaseCollector(Collector):
    """Reads the outbox and the automations' state at each scrape, in one read-only
    transaction on a connection of the service's pool (`database`; given a URL, a pool of
    its own)."""

    def __init__(self, database: db.Database | str):
        self._owns_database = isinstance(database, str)
        self.database = db.Database(database, shares={SHARE: 1}) if isinstance(database, str) else database
        self._lock = threading.Lock()  # the HTTP server may serve two scrapes at once

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("engine_database_up", "1 when this scrape could read the database, else 0.")
        with self._lock:
            try:
                rows = self._read()
            except DatabaseError as exc:
                # A raising collector turns the whole scrape into an error: report it instead.
                log.warning(
                    "metrics: cannot read the database: %s",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else exc,
                )
                up.add_metric([], 0)
                yield up
                return
        up.add_metric([], 1)
        yield up

        triggers = CounterMetricFamily(
            "engine_triggers", "Triggers fired by each automation (from the database).", labels=["automation"]
        )
        for r in rows["triggers"]:
            triggers.add_metric([r["automation"]], r["fired"])
        yield triggers
        automations = rows["automations"][0]
        yield GaugeMetricFamily(
            "engine_automations_enabled", "Enabled automations.", value=automations["enabled"]
        )
        yield GaugeMetricFamily(
            "engine_automations_failing",
            "Enabled automations whose last evaluation failed (automation_state.last_error).",
            value=automations["failing"],
        )
        deliveries = GaugeMetricFamily("engine_deliveries", "Deliveries by status.", labels=["status"])
        counts = {r["status"]: r["deliveries"] for r in rows["deliveries"]}
        for status in ("pending", "sending", "succeeded", "failed", "skipped"):  # every status, 0 included
            deliveries.add_metric([status], counts.get(status, 0))
        yield deliveries
        queue = rows["queue"][0]
        yield GaugeMetricFamily(
            "engine_delivery_queue_depth", "Deliveries waiting to be sent (pending).", value=queue["pending"]
        )
        yield GaugeMetricFamily(
            "engine_delivery_oldest_pending_age_seconds",
            "Age of the oldest delivery not yet final (pending or sending); 0 when there is none.",
            value=queue["oldest_age_seconds"],
        )

    def _read(self) -> dict[str, list[dict[str, Any]]]:
        with self.database.transaction(SHARE) as conn:
            # the timeout ends with the transaction: the pooled connection keeps no setting
            db.run(conn, "metrics_scrape_timeout", {"timeout_ms": str(SCRAPE_STATEMENT_TIMEOUT_MS)})
            return {
                "triggers": db.rows(conn, "metrics_triggers_by_automation"),
                "automations": db.rows(conn, "metrics_automations"),
                "deliveries": db.rows(conn, "metrics_deliveries_by_status"),
                "queue": db.rows(conn, "metrics_delivery_queue"),
            }

    def close(self) -> None:
        if self._owns_database:
            self.database.close()


class ServiceMetrics:
    """The metrics of one `engine serve`, on their own registry (never the global one, so two
    services in one process, as in tests, do not collide)."""

    def __init__(self, database: db.Database | str):
        self.registry = CollectorRegistry()
        self.ticks = Counter(
            "engine_ticks", "Evaluation ticks by outcome.", ["outcome"], registry=self.registry
        )
        self.tick_duration = Histogram(
            "engine_tick_duration_seconds",
            "Duration of evaluation ticks.",
            buckets=TICK_BUCKETS,
            registry=self.registry,
        )
        self.fired = Counter(
            "engine_tick_triggers_fired", "Triggers fired by this process's ticks.", registry=self.registry
        )
        self.evaluation_failures = Counter(
            "engine_automation_evaluation_failures",
            "Evaluations of an automation that failed in this process (the rule is skipped for that tick).",
            ["automation"],
            registry=self.registry,
        )
        for outcome in ("ok", "database_unavailable", "error"):
            self.ticks.labels(outcome)  # present at 0 from the start
        self.database = DatabaseCollector(database)
        self.registry.register(self.database)
        self._server: Any = None

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Serve /metrics on `address:port` in a daemon thread; returns the port bound
        (useful with port 0)."""
        self._server, _thread = start_http_server(port, addr=address, registry=self.registry)
        bound = self._server.server_address[1]
        log.info("metrics: serving Prometheus metrics on http://%s:%d/metrics", address, bound)
        return bound

    def record_tick(self, result: TickResult | None, seconds: float, *, outcome: str | None = None) -> None:
        """After a tick: its result (None when it raised) and how long it took."""
        self.ticks.labels(outcome or ("ok" if result is not None else "error")).inc()
        self.tick_duration.observe(seconds)
        if result is not None:
            self.fired.inc(result.fired)
            for name in result.failed:
                self.evaluation_failures.labels(name).inc()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.database.close()


class WebMetrics:
    """Metrics of one `engine web` process, served by the app itself at /metrics:
    `engine_web_requests_total{method,route,status}` and
    `engine_web_request_duration_seconds{method,route}` (route: the path template, so that
    ids do not make a label each)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "engine_web_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "engine_web_request_duration_seconds",
            "Time to answer HTTP requests.",
            ["method", "route"],
            buckets=TICK_BUCKETS,
            registry=self.registry,
        )

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


class _NoMetrics:
    """Metrics off: the same calls, doing nothing."""

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        return 0

    def record_tick(self, result: TickResult | None, seconds: float, *, outcome: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


NO_METRICS = _NoMetrics()


def listen_address(text: str) -> tuple[str | None, int]:
    """`PORT`, `HOST:PORT` or `[IPv6]:PORT` (`engine serve --metrics-port`): the host (None when
    not given) and the port. ValueError, with examples, when it is neither."""
    host: str | None
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host = None
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # an IPv6 address without brackets: where would the port start?
        host = ""
    if port.isdigit() and int(port) <= 65535 and host != "":
        return host, int(port)
    raise ValueError(f"{text!r} is not a port or HOST:PORT (examples: 9108, 0.0.0.0:9108, [::]:9108)")


def for_service(database: db.Database | str, port: int | None) -> ServiceMetrics | _NoMetrics:
    """ServiceMetrics when a port is set, else NO_METRICS."""
    return ServiceMetrics(database) if port is not None else NO_METRICS
