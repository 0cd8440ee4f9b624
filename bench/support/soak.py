"""The kill soak, shared by `bench/soak.py` (>= 20 rounds) and the fault tests (a few rounds).

One `Soak` holds a database, 20 automations (threshold, change, run state and artifact rules)
whose webhooks go to a local `DeliveryReceiver`, and one or more `engine serve` processes.
Each `round()`:

1. a burst: 100 fresh runs log metrics (several flushes each), finish (some fail, some are
   killed), and every tenth logs an artifact version that gets an alias, a tag and a registry
   link — from a few threads at once;
2. at a random moment of the burst or of the work that trails it (up to twice the burst's
   duration), one service is killed with SIGKILL and (by default) started again;
3. once the burst is over, wait until the system has settled: the triggers equal the
   reference set — `engine.evaluation.backtest` over the same history, per automation,
   compared by (automation, cause) — and every delivery has succeeded and was answered 2xx
   by the receiver.

The receiver answers 500 to a few requests (retries then cross the kills too) and each
request only after a short random delay (so kills find requests in flight). It counts the
requests per X-Automation-Delivery id: an id answered 2xx more than once is a repeat with
the same id (a delivery in flight at the kill, re-sent after its lease), never a new id.

The services run with a short lease margin (ENGINE_DELIVERY_LEASE_MARGIN): a delivery whose
request was in flight at the kill is sent again after margin + 6 x its timeout (1 s here).
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from collections.abc import Callable
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

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """Requests, and answers 2xx the sender got, per delivery id."""
        with self._lock:
            requests = collections.Counter(r.headers.get("X-Automation-Delivery", "") for r in self.requests)
            succeeded = collections.Counter(
                r.headers.get("X-Automation-Delivery", "")
                for r, status in self.answered
                if 200 <= status < 300
            )
        return dict(requests), dict(succeeded)

    def close(self) -> None:
        self.stop()


# -- the automations ------------------------------------------------------------------------
def soak_rules(url: str) -> list[Automation]:
    """20 automations: 7 threshold, 5 change, 4 run state, 4 artifact/registry; all webhooks."""
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
    filters = {  # run filters on a few, checked against the run's attributes
        "run-started": {"user": "user0"},
        "run-any": {"name_regex": "5$"},
        "acc-avg3-above": {"name_regex": "^r[0-9]+-[0-9]*[02468]$"},
    }
    rules = []
    for name, scope, event, cooldown in events:
        rule: dict[str, Any] = {"name": name, "scope": scope, "event": event, "action": action}
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
@dataclass
class Observation:
    expected: set[tuple[str, str]]
    triggers: list[tuple[str, str]]
    deliveries: dict[str, str]  # webhook delivery id -> status
    per_trigger: int  # the most deliveries any trigger has (1: one action each)
    requests: dict[str, int]
    succeeded: dict[str, int]

    @property
    def missing(self) -> int:
        return len(self.expected - set(self.triggers))

    @property
    def extra(self) -> int:
        return len(set(self.triggers) - self.expected)

    @property
    def duplicates(self) -> int:
        return len(self.triggers) - len(set(self.triggers)) + max(0, self.per_trigger - 1)

    @property
    def unfinished(self) -> int:
        return sum(1 for s in self.deliveries.values() if s != "succeeded")

    @property
    def unseen(self) -> int:
        """Deliveries the receiver never answered 2xx."""
        return sum(1 for d in self.deliveries if not self.succeeded.get(d))

    @property
    def unknown_ids(self) -> int:
        """Ids the receiver saw that are no delivery of the database (must be 0)."""
        return sum(1 for d in self.requests if d not in self.deliveries)

    @property
    def redelivered_same_id(self) -> int:
        return sum(n - 1 for n in self.succeeded.values() if n > 1)

    @property
    def settled(self) -> bool:
        return (
            set(self.triggers) == self.expected
            and not self.unfinished
            and not self.unseen
            and not self.duplicates
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
    conn: psycopg.Connection, expected: set[tuple[str, str]], receiver: DeliveryReceiver
) -> Observation:
    """The triggers and deliveries stored, and what the receiver got, against `expected`."""
    triggers = [(n, c) for n, c in conn.execute(bench_query("soak_triggers", SQL))]
    deliveries = {str(i): s for i, s in conn.execute(bench_query("soak_webhook_deliveries", SQL))}
    (per_trigger,) = conn.execute(bench_query("soak_most_deliveries_per_trigger", SQL)).fetchone()
    requests, succeeded = receiver.snapshot()
    return Observation(expected, triggers, deliveries, per_trigger, requests, succeeded)


# -- rounds --------------------------------------------------------------------------------
@dataclass
class RoundResult:
    round: int
    burst_s: float
    killed_after_s: float | None  # None: no kill this round
    in_flight_at_kill: int  # deliveries 'sending' right after the kill
    settle_s: float | None  # from the burst's last run to the last write (a kill after the
    # burst included); None: did not settle in time
    triggers: int  # new this round
    deliveries: int
    observation: Observation | None = field(repr=False)  # None once two newer rounds exist

    def line(self) -> str:
        obs = self.observation
        settle = f"{self.settle_s:.1f}s" if self.settle_s is not None else "NOT SETTLED"
        kill = (
            f"killed at {self.killed_after_s:4.1f}s ({self.in_flight_at_kill} in flight)"
            if self.killed_after_s is not None
            else "no kill"
        )
        return (
            f"round {self.round:3d}: burst {self.burst_s:4.1f}s, {kill}, settled in {settle}; +{self.triggers} triggers, "
            f"+{self.deliveries} deliveries; totals: missing {obs.missing}, extra {obs.extra}, "
            f"duplicates {obs.duplicates}, unfinished {obs.unfinished}, unseen {obs.unseen}, "
            f"repeated ids {obs.redelivered_same_id}"
        )


class Soak:
    """A database, the receiver, the 20 automations and `services` `engine serve` processes."""

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
        apply_rules(self.conn, self.rules)
        self.services = [self._start(i) for i in range(services)]
        self.stopped: list[ServeProcess] = []  # killed and not restarted
        self.results: list[RoundResult] = []
        self.expected: set[tuple[str, str]] = set()  # the reference set of every round so far
        self.kills = 0
        self._burst_estimate = 3.0

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"serve{index}.log"

    def _start(self, index: int) -> ServeProcess:
        return ServeProcess(self.url, self.log_path(index), interval=0.5, extra_env=SERVICE_ENV).start()

    def round(
        self, *, kill: bool = True, restart: bool = True, on_progress: Callable[[str], None] = lambda _: None
    ) -> RoundResult:
        """One burst, with one SIGKILL of a random service at a random moment (restarted
        unless `restart` is False), then wait until settled."""
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
        killed_after, in_flight = None, 0
        if kill:
            # within the burst or the processing that trails it (evaluation, deliveries)
            time.sleep(self.rng.uniform(0.1, 2 * self._burst_estimate))
            victim = self.rng.randrange(len(self.services))
            self.services[victim].kill()
            killed_after = time.monotonic() - started
            self.kills += 1
            (in_flight,) = self.conn.execute(bench_query("soak_in_flight", SQL)).fetchone()
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
            obs = observe(self.conn, self.expected, self.receiver)
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
            settle_s,
            triggers=len(obs.triggers) - (len(before.triggers) if before else 0),
            deliveries=len(obs.deliveries) - (len(before.deliveries) if before else 0),
            observation=obs,
        )
        self.results.append(result)
        for old in self.results[:-2]:  # each holds every trigger so far: keep the last two only
            old.observation = None
        on_progress(result.line())
        return result

    def summary(self) -> dict[str, Any]:
        """The figures of every round so far (totals over the whole database)."""
        last = (
            self.results[-1].observation if self.results else observe(self.conn, self.expected, self.receiver)
        )
        settles = [r.settle_s for r in self.results if r.settle_s is not None]
        return {
            "rounds": len(self.results),
            "kills": self.kills,
            "triggers": len(last.triggers),
            "duplicates": last.duplicates,
            "lost": last.missing + last.unfinished + last.unseen,
            "deliveries": len(last.deliveries),
            "redelivered_same_id": last.redelivered_same_id,
            "max_settle_s": round(max(settles), 1) if settles else None,
            "extra_triggers": last.extra,
            "unknown_delivery_ids": last.unknown_ids,
            "unsettled_rounds": sum(1 for r in self.results if r.settle_s is None),
            "kills_with_delivery_in_flight": sum(1 for r in self.results if r.in_flight_at_kill),
            "requests": sum(last.requests.values()),
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
