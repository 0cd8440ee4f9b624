"""The kill soak, shared by `bench/soak.py` (>= 20 rounds) and the fault tests (a few rounds).

One `Soak` holds a database, 24 automations (threshold, change, run state and artifact rules;
two of them digested, two rate-limited) whose webhooks go to a local `DeliveryReceiver`, and
one or more `engine serve` processes. Each `round()`:

1. a burst: 100 fresh runs log metrics (several flushes each), finish (some fail, some are
   killed), and every tenth logs an artifact version that gets an alias, a tag and a registry
   link — from a few threads at once;
2. at a random moment of the burst or of the work that trails it (up to twice the burst's
   duration; later if no digest window is open then, so that every kill lands inside one),
   one service is killed with SIGKILL and (by default) started again;
3. once the burst is over, wait until the system has settled: the triggers equal the
   reference set — `engine.evaluation.backtest` over the same history, per automation,
   compared by (automation, cause) — and every delivery has reached its end (see
   `Observation`). Digest windows (1m) span rounds: a round does not wait for them to close;
   `drain()` does, at the end.

Lost and duplicated, exactly (`Observation`):

* an automation without controls: each trigger has exactly one delivery, `succeeded` and
  answered 2xx by the receiver (lost: no delivery, not succeeded, never answered 2xx;
  duplicate: a second delivery or trigger);
* a digested one: each trigger is a member of exactly one window, and once its window is
  closed it is listed in exactly one digest delivery the receiver answered 2xx, the window's
  own (lost: in no window, or missing from its window's delivered body; duplicate: in two
  windows, or listed by two deliveries or twice in one; wrong: listed by a window it is not
  a member of, or a body whose `digest_count` is not its list's length);
* a rate-limited one: each trigger's one delivery is either `succeeded` (answered 2xx) or
  `suppressed` and never requested at all (a suppressed one the receiver saw is a
  duplicate: both), and in no rolling `per` of the deliveries' creation times (the moment the
  limit admitted them, on the services' clock) are there more than `count` that were not
  suppressed (`over_limit`).

The receiver answers 500 to a few requests (retries then cross the kills too) and each
request only after a short random delay (so kills find requests in flight). It counts the
requests per X-Automation-Delivery id: an id answered 2xx more than once is a repeat with
the same id (a delivery in flight at the kill, re-sent after its lease), never a new id.

The services run with a short lease margin (ENGINE_DELIVERY_LEASE_MARGIN): a delivery whose
request was in flight at the kill is sent again after margin + 6 x its timeout (1 s here).
"""

from __future__ import annotations

import collections
import functools
import json
import random
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

import engine
from bench.support.dataset import bench_query
from engine.automations import apply_rules
from engine.compiler import is_metric_rule
from engine.evaluation import backtest
from engine.rules import Automation
from tests.acceptance.service_helpers import ServeProcess
from tests.receiver import Received, Receiver, Reply

SQL = "soak.sql"  # the named queries of this module, next to it
PROJECT = "soak/burst"
REGISTRY = "soak-models"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
STEPS = 15
STEP_SPACING = timedelta(minutes=2)  # the values' own times: cooldowns are measured on them
WEBHOOK_TIMEOUT = 1.0
LEASE_MARGIN = 3.0  # so a delivery cut by a kill is re-sent ~9 s later, not ~36 s
SERVICE_ENV = {
    "ENGINE_DELIVERY_LEASE_MARGIN": str(LEASE_MARGIN),
    "ENGINE_RETRY_BASE_SECONDS": "0.2",
    "ENGINE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
}


# -- the receiver ----------------------------------------------------------------------------
class DeliveryReceiver(Receiver):
    """The shared test receiver on 127.0.0.1, answering 500 to a share of requests after a
    random delay; counts requests and 2xx answers per delivery id."""

    def __init__(self, fail_ratio: float = 0.05, max_delay: float = 0.05, seed: int = 0):
        rng, lock = random.Random(seed), threading.Lock()

        def answer(_request: Received) -> Reply:
            with lock:
                fail = rng.random() < fail_ratio
                delay = rng.uniform(0, max_delay)
            return Reply(500 if fail else 200, hang=delay)

        super().__init__(answer)
        self.start()

    def snapshot(
        self, bodies_of: Collection[str] = ()
    ) -> tuple[dict[str, int], dict[str, int], dict[str, list[Any]]]:
        """Requests, and answers 2xx the sender got, per delivery id; and the bodies of the
        2xx-answered requests of the ids in `bodies_of` (parsed JSON, one per answer)."""
        with self._lock:
            requests = collections.Counter(r.headers.get("X-Automation-Delivery", "") for r in self.requests)
            answered = [
                (r.headers.get("X-Automation-Delivery", ""), r)
                for r, status in self.answered
                if 200 <= status < 300
            ]
        succeeded = collections.Counter(d for d, _ in answered)
        bodies: dict[str, list[Any]] = {}
        for delivery, request in answered:
            if delivery in bodies_of:
                bodies.setdefault(delivery, []).append(request.json())
        return dict(requests), dict(succeeded), bodies

    def close(self) -> None:
        self.stop()


# -- the automations ------------------------------------------------------------------------
DIGEST = "1m"  # the shortest window there is: windows close during the soak, and span rounds
DIGEST_SECONDS = 60.0
DIGEST_PAYLOAD = {
    "automation": "${automation_name}",
    "digest_count": "${digest_count}",
    "digest": "${digest}",
}


def soak_rules(url: str) -> list[Automation]:
    """24 automations: 9 threshold, 5 change, 6 run state, 4 artifact/registry; all webhooks.
    Two are digested (`digest-*`), two rate-limited (`limited-*`, short periods so that the
    limit both suppresses and lets through again within a soak)."""
    action = {
        "type": "webhook",
        "url": url,
        "timeout": WEBHOOK_TIMEOUT,
        "max_attempts": 10,
        "payload": {"automation": "${automation_name}", "trigger": "${trigger_id}", "run": "${run_name}"},
    }
    project = {"project": PROJECT}
    events: list[tuple[str, dict, dict, str | None]] = [
        (
            "acc-avg3-above",
            project,
            {
                "type": "run_metric_threshold",
                "metric": "acc",
                "window": 3,
                "operator": ">",
                "threshold": 0.85,
            },
            "5m",
        ),
        (
            "acc-max1-above",
            project,
            {
                "type": "run_metric_threshold",
                "metric": "acc",
                "window": 1,
                "aggregation": "max",
                "operator": ">=",
                "threshold": 0.97,
            },
            "10m",
        ),
        (
            "acc-min5-below",
            project,
            {
                "type": "run_metric_threshold",
                "metric": "acc",
                "window": 5,
                "aggregation": "min",
                "operator": "<",
                "threshold": 0.05,
            },
            "1h",
        ),
        (
            "loss-avg5-low",
            project,
            {
                "type": "run_metric_threshold",
                "metric": "loss",
                "window": 5,
                "operator": "<=",
                "threshold": 0.5,
            },
            "1h",
        ),
        (
            "loss-max2-high",
            project,
            {
                "type": "run_metric_threshold",
                "metric": "loss",
                "window": 2,
                "aggregation": "max",
                "operator": ">",
                "threshold": 2.2,
            },
            "10m",
        ),
        (
            "lr-avg4-low",
            project,
            {
                "type": "run_metric_threshold",
                "metric": "lr",
                "window": 4,
                "operator": "<",
                "threshold": 0.002,
            },
            "24h",
        ),
        (
            "gn-avg10-high",
            project,
            {
                "type": "run_metric_threshold",
                "metric": "grad_norm",
                "window": 10,
                "operator": ">",
                "threshold": 1.3,
            },
            "1h",
        ),
        (
            "loss-drop",
            project,
            {
                "type": "run_metric_change",
                "metric": "loss",
                "current_window": 3,
                "prior_window": 5,
                "direction": "decrease",
                "amount": 0.6,
            },
            "1h",
        ),
        (
            "acc-jump",
            project,
            {
                "type": "run_metric_change",
                "metric": "acc",
                "current_window": 2,
                "prior_window": 4,
                "change": "absolute",
                "direction": "increase",
                "amount": 0.35,
            },
            "1h",
        ),
        (
            "gn-swing",
            project,
            {
                "type": "run_metric_change",
                "metric": "grad_norm",
                "current_window": 3,
                "prior_window": 3,
                "aggregation": "max",
                "direction": "any",
                "amount": 0.5,
            },
            "5m",
        ),
        (
            "lr-cut",
            project,
            {
                "type": "run_metric_change",
                "metric": "lr",
                "current_window": 1,
                "prior_window": 3,
                "direction": "decrease",
                "amount": 0.4,
            },
            "1h",
        ),
        (
            "acc-min-rise",
            project,
            {
                "type": "run_metric_change",
                "metric": "acc",
                "current_window": 5,
                "prior_window": 5,
                "aggregation": "min",
                "change": "absolute",
                "direction": "increase",
                "amount": 0.5,
            },
            "30m",
        ),
        ("run-started", project, {"type": "run_state", "states": ["running"]}, None),
        ("run-finished", project, {"type": "run_state", "states": ["finished"]}, None),
        ("run-failed", project, {"type": "run_state", "states": ["crashed"]}, None),
        ("run-any", project, {"type": "run_state", "states": ["running", "finished", "failed"]}, "1m"),
        (
            "artifact-created",
            project,
            {"type": "artifact_version_created", "collection_type": "dataset"},
            None,
        ),
        ("alias-prod", project, {"type": "artifact_alias_added", "alias_regex": "^prod"}, None),
        ("tag-any", project, {"type": "artifact_tag_added", "tag_regex": "."}, None),
        ("registry-linked", {"registry": REGISTRY}, {"type": "registry_version_linked"}, None),
    ]
    events += [
        (
            "digest-acc-high",
            project,
            {
                "type": "run_metric_threshold",
                "metric": "acc",
                "window": 2,
                "operator": ">",
                "threshold": 0.8,
            },
            "1h",
        ),
        ("digest-finished", project, {"type": "run_state", "states": ["finished"]}, None),
        (
            "limited-loss-high",
            project,
            {
                "type": "run_metric_threshold",
                "metric": "loss",
                "window": 1,
                "operator": ">",
                "threshold": 2.0,
            },
            "1h",
        ),
        ("limited-started", project, {"type": "run_state", "states": ["running"]}, None),
    ]
    controls: dict[str, dict[str, Any]] = {
        "digest-acc-high": {"digest": DIGEST, "payload": DIGEST_PAYLOAD},
        "digest-finished": {"digest": DIGEST, "payload": DIGEST_PAYLOAD},
        "limited-loss-high": {"rate_limit": {"count": 3, "per": "10s"}},
        "limited-started": {"rate_limit": {"count": 5, "per": "20s"}},
    }
    filters = {  # run filters on a few, checked against the run's attributes
        "run-started": {"user": "user0"},
        "run-any": {"name_regex": "5$"},
        "acc-avg3-above": {"name_regex": "^r[0-9]+-[0-9]*[02468]$"},
    }
    rules = []
    for name, scope, event, cooldown in events:
        rule: dict[str, Any] = {
            "name": name,
            "scope": scope,
            "event": event,
            "action": action | controls.get(name, {}),
        }
        if name in filters:
            rule["run_filter"] = filters[name]
        if cooldown is not None:
            rule["cooldown"] = cooldown
        rules.append(Automation.model_validate(rule))
    return rules


# -- the burst ------------------------------------------------------------------------------
def round_start(round_no: int) -> datetime:
    """The values of round n carry times from this day on (one day per round)."""
    return T0 + timedelta(days=round_no)


def log_run(round_no: int, index: int, seed: int) -> None:
    """One run of a burst (deterministic for its (seed, round, index))."""
    rng = random.Random(f"{seed}:{round_no}:{index}")
    t0 = round_start(round_no)
    run = engine.init(
        project=PROJECT, name=f"r{round_no}-{index}", user=f"user{index % 3}", system_metrics_interval=0
    )
    lr = 0.01
    for step in range(STEPS):
        if step in (5, 10) and rng.random() < 0.5:
            lr /= 3
        run.log(
            {
                "acc": min(1.0, step / STEPS + rng.gauss(0, 0.15)),
                "loss": max(0.0, 2.0 - step / 8 + rng.gauss(0, 0.3)),
                "lr": lr,
                "grad_norm": 1.0 + abs(rng.gauss(0, 0.3)) * (3 if rng.random() < 0.1 else 1),
            },
            step=step,
            time=t0 + step * STEP_SPACING,
        )
        if step % 5 == 4:
            run.flush()  # several batches per run: kills land between them
    if index % 10 == 0:
        api = engine.Api(user="soak")
        version = run.log_artifact(f"data-{round_no}-{index // 30}", type="dataset", aliases=["candidate"])
        api.add_alias(version, f"prod-{index}")
        api.add_tag(version, f"t{index % 4}")
        api.link_artifact(version, registry=REGISTRY, collection=f"c{index % 2}")
    roll = rng.random()
    if roll < 0.05:
        engine.Api(user="admin").kill_run(PROJECT, run.id)  # killed never fires
    run.finish(exit_code=1 if roll < 0.15 else 0)


def burst(round_no: int, runs: int, seed: int, threads: int = 4) -> None:
    """`runs` runs from `threads` threads at once; the first error of a thread is raised."""
    errors: list[BaseException] = []

    def work(part: int) -> None:
        for index in range(part, runs, threads):
            log_run(round_no, index, seed)

    workers = [
        threading.Thread(target=_capturing(work, errors), args=(p,), name=f"soak-burst-{p}")
        for p in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


# -- what the database says ---------------------------------------------------------------------
@dataclass(frozen=True)
class Flow:
    """Which automations are digested, and the rate limits (count, per seconds) of the others."""

    digested: frozenset[str]
    limited: dict[str, tuple[int, float]]

    @classmethod
    def of(cls, rules: list[Automation]) -> Flow:
        limits = {
            a.name: (a.action.rate_limit.count, a.action.rate_limit.per.total_seconds())
            for a in rules
            if a.action.rate_limit is not None and a.action.digest is None
        }
        return cls(frozenset(a.name for a in rules if a.action.digest is not None), limits)


@dataclass(frozen=True)
class TriggerRow:
    id: int
    automation: str
    cause: str
    deliveries: int  # its own (a digest's delivery belongs to the trigger that opened the window)
    windows: int  # the digest windows it is a member of


@dataclass(frozen=True)
class DeliveryRow:
    status: str
    automation: str
    created_at: datetime


@dataclass(frozen=True)
class Window:
    id: int
    closed: bool
    delivery_id: str | None
    members: tuple[int, ...]


@dataclass
class Observation:
    """The stored triggers, deliveries and digest windows, and what the receiver got, judged
    as the module docstring says."""

    expected: set[tuple[str, str]]
    rows: list[TriggerRow]
    deliveries: dict[str, DeliveryRow]  # webhook delivery id -> row
    windows: list[Window]
    flow: Flow
    requests: dict[str, int]
    succeeded: dict[str, int]
    bodies: dict[str, list[Any]]  # digest delivery id -> the bodies answered 2xx

    @property
    def triggers(self) -> list[tuple[str, str]]:
        return [(r.automation, r.cause) for r in self.rows]

    def faults(self) -> dict[str, int]:
        """Every count that must be 0 after a round, with its value: all 0 when it held."""
        names = ("missing", "extra", "lost", "duplicates", "unfinished", "unseen", "unknown_ids")
        return {n: getattr(self, n) for n in (*names, "digest_wrong", "over_limit")}

    @property
    def missing(self) -> int:
        return len(self.expected - set(self.triggers))

    @property
    def extra(self) -> int:
        return len(set(self.triggers) - self.expected)

    @property
    def undelivered(self) -> int:
        """Triggers with no delivery of their own (no window, for a digested automation)."""
        return sum(
            1 for r in self.rows if (r.windows if r.automation in self.flow.digested else r.deliveries) == 0
        )

    @property
    def duplicates(self) -> int:
        twice = len(self.triggers) - len(set(self.triggers))
        for r in self.rows:
            if r.automation in self.flow.digested:
                twice += max(0, r.windows - 1)
            else:
                twice += max(0, r.deliveries - 1) + r.windows
        return twice + self.digest_listed_twice + self.sent_suppressed

    @property
    def unfinished(self) -> int:
        """Deliveries not at their end: succeeded, or suppressed by the automation's rate limit."""
        return sum(
            1
            for d in self.deliveries.values()
            if d.status != "succeeded"
            and not (d.status == "suppressed" and d.automation in self.flow.limited)
        )

    @property
    def unseen(self) -> int:
        """Succeeded deliveries the receiver never answered 2xx."""
        return sum(
            1 for i, d in self.deliveries.items() if d.status == "succeeded" and not self.succeeded.get(i)
        )

    @property
    def sent_suppressed(self) -> int:
        """Suppressed deliveries the receiver got a request for (must be 0: sent or suppressed, never both)."""
        return sum(1 for i, d in self.deliveries.items() if d.status == "suppressed" and self.requests.get(i))

    @property
    def suppressed(self) -> int:
        return sum(1 for d in self.deliveries.values() if d.status == "suppressed")

    @property
    def over_limit(self) -> int:
        """Rolling periods holding more than `count` deliveries the limit let through: for each
        rate-limited automation, the i-th and (i + count)-th such delivery by creation time less
        than `per` apart."""
        over = 0
        for name, (count, per) in self.flow.limited.items():
            admitted = sorted(
                d.created_at
                for d in self.deliveries.values()
                if d.automation == name and d.status != "suppressed"
            )
            over += sum(
                1
                for first, last in zip(admitted, admitted[count:], strict=False)
                if (last - first).total_seconds() < per
            )
        return over

    # -- digests
    @functools.cached_property
    def _listed(self) -> tuple[collections.Counter[int], int, int]:
        """Over the delivered digests: how many deliveries list each trigger, the triggers
        listed twice by one body, and the wrong listings (a trigger not of that window, a
        `digest_count` not the list's length, two answered bodies of one delivery that differ)."""
        listed: collections.Counter[int] = collections.Counter()
        twice = wrong = 0
        for window in self.windows:
            bodies = self.bodies.get(window.delivery_id or "")
            if not bodies:
                continue
            ids = [int(item["trigger_id"]) for item in bodies[0]["digest"]]
            twice += len(ids) - len(set(ids))
            listed.update(set(ids))
            wrong += len(set(ids) - set(window.members))
            wrong += sum(1 for b in bodies if int(b["digest_count"]) != len(b["digest"]) or b != bodies[0])
        return listed, twice, wrong

    @property
    def digest_listed_twice(self) -> int:
        listed, twice, _ = self._listed
        return twice + sum(n - 1 for n in listed.values() if n > 1)

    @property
    def digest_wrong(self) -> int:
        return self._listed[2]

    @property
    def digest_unlisted(self) -> int:
        """Members of a closed window that no body the receiver answered 2xx lists (yet: its
        delivery may still be on its way, then it is also counted unfinished)."""
        listed, _, _ = self._listed
        return sum(1 for w in self.windows if w.closed for t in w.members if not listed.get(t))

    @property
    def digest_triggers(self) -> int:
        return sum(1 for r in self.rows if r.automation in self.flow.digested)

    @property
    def waiting(self) -> int:
        """Triggers in windows not closed yet (not lost: their delivery is still to come)."""
        return sum(len(w.members) for w in self.windows if not w.closed)

    @property
    def open_windows(self) -> int:
        return sum(1 for w in self.windows if not w.closed)

    @property
    def lost(self) -> int:
        return self.missing + self.undelivered + self.unfinished + self.unseen + self.digest_unlisted

    @property
    def unknown_ids(self) -> int:
        """Ids the receiver saw that are no delivery of the database (must be 0)."""
        return sum(1 for d in self.requests if d not in self.deliveries)

    @property
    def redelivered_same_id(self) -> int:
        return sum(n - 1 for n in self.succeeded.values() if n > 1)

    @property
    def settled(self) -> bool:
        """Everything has reached its end, but for the digest windows still open."""
        return (
            set(self.triggers) == self.expected
            and not self.lost
            and not self.duplicates
            and not self.digest_wrong
            and not self.over_limit
        )


def reference(
    conn: psycopg.Connection, rules: list[Automation], values_since: datetime, events_since: datetime
) -> set[tuple[str, str]]:
    """What the automations must fire for the data since then: the backtest, per automation.
    Metric rules look at the values' own times, event rules at the events' (wall clock) times."""
    return {
        (a.name, f.cause)
        for a in rules
        for f in backtest(conn, a, values_since if is_metric_rule(a) else events_since)
    }


def observe(
    conn: psycopg.Connection, expected: set[tuple[str, str]], receiver: DeliveryReceiver, flow: Flow
) -> Observation:
    """The triggers, deliveries and windows stored (one snapshot of the database: a window seen
    closed has its delivery among those read), then what the receiver got, against `expected`.
    `conn` must be in autocommit mode."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        rows = [TriggerRow(*r) for r in conn.execute(bench_query("soak_triggers", SQL))]
        deliveries = {
            str(i): DeliveryRow(s, n, c)
            for i, s, n, c in conn.execute(bench_query("soak_webhook_deliveries", SQL))
        }
        windows = [
            Window(i, closed, str(d) if d is not None else None, tuple(m))
            for i, closed, d, m in conn.execute(bench_query("soak_digests", SQL))
        ]
    digest_ids = {w.delivery_id for w in windows if w.delivery_id is not None}
    # after the snapshot: a delivery it shows succeeded was answered 2xx before
    requests, succeeded, bodies = receiver.snapshot(digest_ids)
    return Observation(expected, rows, deliveries, windows, flow, requests, succeeded, bodies)


# -- rounds --------------------------------------------------------------------------------
@dataclass
class RoundResult:
    round: int
    burst_s: float
    killed_after_s: float | None  # None: no kill this round
    in_flight_at_kill: int  # deliveries 'sending' right after the kill
    open_windows_at_kill: int  # digest windows open (not closed yet) right after the kill
    settle_s: float | None  # from the burst's last run to the last write (a kill after the
    # burst included); None: did not settle in time
    triggers: int  # new this round
    deliveries: int
    observation: Observation | None = field(repr=False)  # None once two newer rounds exist

    def line(self) -> str:
        obs = self.observation
        assert obs is not None
        settle = f"{self.settle_s:.1f}s" if self.settle_s is not None else "NOT SETTLED"
        kill = (
            f"killed at {self.killed_after_s:4.1f}s ({self.in_flight_at_kill} in flight, "
            f"{self.open_windows_at_kill} digest windows open)"
            if self.killed_after_s is not None
            else "no kill"
        )
        return (
            f"round {self.round:3d}: burst {self.burst_s:4.1f}s, {kill}, settled in {settle}; +{self.triggers} triggers, "
            f"+{self.deliveries} deliveries; totals: missing {obs.missing}, extra {obs.extra}, "
            f"lost {obs.lost}, duplicates {obs.duplicates}, unfinished {obs.unfinished}, unseen {obs.unseen}, "
            f"repeated ids {obs.redelivered_same_id}; digests {len(obs.windows)} "
            f"({obs.waiting} triggers waiting in {obs.open_windows} open), wrong {obs.digest_wrong}; "
            f"suppressed {obs.suppressed}, over limit {obs.over_limit}"
        )


class Soak:
    """A database, the receiver, the 24 automations and `services` `engine serve` processes."""

    def __init__(
        self,
        url: str,
        log_dir: Path,
        *,
        services: int = 1,
        seed: int = 1,
        runs: int = 100,
        settle_timeout: float = 120.0,
        fail_ratio: float = 0.05,
    ):
        self.url, self.log_dir, self.seed, self.runs = url, log_dir, seed, runs
        self.settle_timeout = settle_timeout
        self.rng = random.Random(seed)
        self.receiver = DeliveryReceiver(fail_ratio=fail_ratio, seed=seed)
        self.conn = psycopg.connect(url, autocommit=True)
        self.rules = soak_rules(self.receiver.url())
        self.flow = Flow.of(self.rules)
        apply_rules(self.conn, self.rules)
        self.services = [self._start(i) for i in range(services)]
        self.stopped: list[ServeProcess] = []  # killed and not restarted
        self.results: list[RoundResult] = []
        self.expected: set[tuple[str, str]] = set()  # the reference set of every round so far
        self.kills = 0
        self.drained: Observation | None = None
        self._burst_estimate = 3.0

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"serve{index}.log"

    def _start(self, index: int) -> ServeProcess:
        return ServeProcess(self.url, self.log_path(index), interval=0.5, extra_env=SERVICE_ENV).start()

    def _open_windows(self) -> int:
        (count,) = self.conn.execute(bench_query("soak_open_windows", SQL)).fetchone()
        return int(count)

    def _observe(self) -> Observation:
        return observe(self.conn, self.expected, self.receiver, self.flow)

    def round(
        self, *, kill: bool = True, restart: bool = True, on_progress: Callable[[str], None] = lambda _: None
    ) -> RoundResult:
        """One burst, with one SIGKILL of a random service at a random moment inside a digest
        window (restarted unless `restart` is False), then wait until settled."""
        number = len(self.results)
        before = self.results[-1].observation if self.results else None
        values_since, events_since = round_start(number), datetime.now(UTC)
        errors: list[BaseException] = []
        done: list[tuple[float, datetime]] = []  # when the burst's last run finished

        def run_burst() -> None:
            try:
                burst(number, self.runs, self.seed)
            finally:
                done.append((time.monotonic(), datetime.now(UTC)))

        writer = threading.Thread(target=_capturing(run_burst, errors), name="soak-burst")
        started = time.monotonic()
        writer.start()
        killed_after, in_flight, open_windows = None, 0, 0
        if kill:
            # within the burst or the processing that trails it (evaluation, deliveries)
            time.sleep(self.rng.uniform(0.1, 2 * self._burst_estimate))
            # ... and inside a digest window: every burst finishes runs, so one opens soon
            deadline = time.monotonic() + self.settle_timeout
            while self.flow.digested and not self._open_windows() and time.monotonic() < deadline:
                time.sleep(0.05)
            victim = self.rng.randrange(len(self.services))
            self.services[victim].kill()
            killed_after = time.monotonic() - started
            self.kills += 1
            (in_flight,) = self.conn.execute(bench_query("soak_in_flight", SQL)).fetchone()
            open_windows = self._open_windows()
            if restart:
                time.sleep(self.rng.uniform(0, 0.5))
                self.services[victim] = self._start(victim)
            else:
                self.stopped.append(self.services.pop(victim))
        writer.join()
        if errors:
            raise errors[0]
        ended, ended_at = done[0]
        burst_s = ended - started
        self._burst_estimate = burst_s
        # the history is complete now: what must have fired is known once and for all
        # (a new set: each round's observation keeps the reference set of its own time)
        self.expected = self.expected | reference(self.conn, self.rules, values_since, events_since)
        settle_s = None
        while True:
            obs = self._observe()
            if obs.settled:
                # when the last trigger or delivery outcome was written (the polling, and the
                # backtest above, take time of their own)
                (last,) = self.conn.execute(bench_query("soak_last_write", SQL)).fetchone()
                settle_s = max(0.0, (last - ended_at).total_seconds())
                break
            if time.monotonic() - ended > self.settle_timeout:
                break
            time.sleep(0.25)
        result = RoundResult(
            number,
            burst_s,
            killed_after,
            in_flight,
            open_windows,
            settle_s,
            triggers=len(obs.rows) - (len(before.rows) if before else 0),
            deliveries=len(obs.deliveries) - (len(before.deliveries) if before else 0),
            observation=obs,
        )
        self.results.append(result)
        for old in self.results[:-2]:  # each holds every trigger so far: keep the last two only
            old.observation = None
        on_progress(result.line())
        return result

    def drain(self, on_progress: Callable[[str], None] = lambda _: None) -> Observation:
        """After the last round: wait until every digest window has closed and its delivery
        reached the receiver (at most a window's length plus the settle timeout), and return
        the final observation (also kept for `summary`)."""
        deadline = time.monotonic() + DIGEST_SECONDS + self.settle_timeout
        while True:
            obs = self._observe()
            if (obs.settled and not obs.open_windows) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        self.drained = obs
        on_progress(
            f"drained: {len(obs.windows)} digest windows, {obs.open_windows} still open, "
            f"{obs.digest_triggers} digested triggers, lost {obs.lost}, duplicates {obs.duplicates}"
        )
        return obs

    def summary(self) -> dict[str, Any]:
        """The figures of every round so far (totals over the whole database); after `drain`,
        its observation's. Digested triggers still waiting in an open window count as lost
        once drained (the windows had their time to close)."""
        last = self.drained or (self.results[-1].observation if self.results else None) or self._observe()
        settles = [r.settle_s for r in self.results if r.settle_s is not None]
        return {
            "rounds": len(self.results),
            "kills": self.kills,
            "triggers": len(last.rows),
            "duplicates": last.duplicates,
            "lost": last.lost + (last.waiting if self.drained else 0),
            "deliveries": len(last.deliveries),
            "redelivered_same_id": last.redelivered_same_id,
            "max_settle_s": round(max(settles), 1) if settles else None,
            "extra_triggers": last.extra,
            "unknown_delivery_ids": last.unknown_ids,
            "unsettled_rounds": sum(1 for r in self.results if r.settle_s is None),
            "kills_with_delivery_in_flight": sum(1 for r in self.results if r.in_flight_at_kill),
            "requests": sum(last.requests.values()),
            "drained": self.drained is not None,
            "digest_triggers": last.digest_triggers,
            "digests": len(last.windows),
            "digests_open": last.open_windows,
            "digest_wrong": last.digest_wrong,
            "kills_inside_digest_window": sum(1 for r in self.results if r.open_windows_at_kill),
            "rate_limited_triggers": sum(1 for r in last.rows if r.automation in self.flow.limited),
            "suppressed": last.suppressed,
            "over_limit": last.over_limit,
        }

    def summary_line(self) -> str:
        return json.dumps(self.summary())

    def close(self) -> None:
        for service in self.services:
            try:
                service.terminate()
            except Exception:  # a service that does not stop in time is killed
                service.stop_quietly()
        self.receiver.close()
        self.conn.close()

    def __enter__(self) -> Soak:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _capturing(target: Callable[..., None], errors: list[BaseException]) -> Callable[..., None]:
    """`target` for a thread, its exception kept in `errors` (for the caller to raise)."""

    def run(*args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:
            errors.append(exc)

    return run
