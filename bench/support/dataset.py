"""The synthetic dataset of the evaluation benchmarks: a fresh database, runs with a long
history bulk-loaded with SQL, the series_state the SDK would have built for it, mixed
automations, and new points logged through the SDK's writer (the real ingest path).

Layout of the history (`Dataset`): `runs` runs x 5 metrics, steps numbered 0 .. total-1.
The initial load holds the *last* `steps` steps of every series, spread over `days` days
ending an hour ago; `grow()` adds the steps before them in older chunks (the same series,
with lower steps, seq and times), as if the database had been collecting for longer.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import statistics
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from engine import clock, db
from engine.localdb import LocalDatabase
from engine.rules import Automation
from engine.sdk.buffer import Stream, Writer
from engine.sdk.flush import DatabaseTransport
from engine.sdk.session import Transport
from engine.settings import Settings

METRICS = ("loss", "accuracy", "lr", "grad_norm", "throughput")  # m = 0..4 in bench_value()
PROJECT = ("bench", "eval")
CHECK_PROJECT = ("bench", "check")
_BLOCK = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)  # the format of engine/sql/queries/*.sql


@cache
def _blocks(path: Path) -> dict[str, str]:
    parts = _BLOCK.split(path.read_text())
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


def bench_query(name: str, file: str = "dataset.sql") -> str:
    """A named block of a .sql file next to this module."""
    return _blocks(Path(__file__).with_name(file))[name]


# -- the database ---------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new, migrated database: in ENGINE_DATABASE_URL's server when it is set, else in an
    embedded cluster in a temporary folder (durable settings: fsync on), destroyed at the end."""
    base = os.environ.get("ENGINE_DATABASE_URL")
    cluster = None
    if base:
        admin_url = make_conninfo(base, dbname=conninfo_to_dict(base).get("dbname", "postgres"))
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = make_conninfo(base, dbname=name)
    else:
        folder = Path(tempfile.mkdtemp(prefix=f"engine-{prefix}-"))
        folder.chmod(0o755)  # as root the server runs as `postgres`, which must get in
        cluster = LocalDatabase(folder, fast=False)
        cluster.up()
        url = cluster.url()
    try:
        with psycopg.connect(url) as conn:
            db.migrate(conn)
        yield url
    finally:
        if cluster is not None:
            cluster.destroy()
        else:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def settings_for(url: str) -> Settings:
    return Settings(database_url=url)


# -- the history -----------------------------------------------------------------------------
@dataclass
class Dataset:
    runs: int
    steps: int  # steps of every series in the initial load
    total: int  # steps of every series once grown
    days: float = 35.0  # time span of the initial load (and of the growth, before it)
    chunk: str = "1 day"
    tail: int = 128  # ENGINE_SERIES_TAIL
    project_id: int = 0
    first_pk: int = 0
    key_ids: dict[str, int] = field(default_factory=dict)
    loaded_from: int = 0  # first step stored so far
    end: datetime = field(
        default_factory=lambda: clock.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    )

    @property
    def series(self) -> int:
        return self.runs * len(METRICS)

    def run_pk(self, r: int) -> int:
        return self.first_pk + r

    def setup(self, conn: psycopg.Connection) -> None:
        """Project, keys, runs, the value function, the chunk interval."""
        conn.execute("SELECT set_chunk_time_interval('metric_points', %s::interval)", (self.chunk,))
        conn.execute(bench_query("create_noise_function"))
        conn.execute(bench_query("create_value_function"))
        conn.execute(bench_query("create_state_function"))
        self.project_id = conn.execute(
            db.query("upsert_project"), {"entity": PROJECT[0], "project": PROJECT[1]}
        ).fetchone()[0]
        conn.execute(bench_query("reserve_history_batches"), {"batches": self.total + 1})
        conn.execute(db.query("intern_keys"), {"keys": list(METRICS)})
        self.key_ids = dict(conn.execute(db.query("key_ids"), {"keys": list(METRICS)}).fetchall())
        first, last, n = conn.execute(
            bench_query("create_runs"),
            {"project_id": self.project_id, "n": self.runs, "at": self.end - timedelta(days=2 * self.days)},
        ).fetchone()
        assert n == self.runs and last - first + 1 == n, "run ids are not consecutive"
        self.first_pk = first
        conn.commit()

    def _load(
        self, conn: psycopg.Connection, s_lo: int, s_hi: int, t0: datetime, slot_s: float, progress
    ) -> int:
        """Steps [s_lo, s_hi] in statements of ~500k rows, with the indexes of metric_points
        dropped meanwhile and rebuilt at the end (the same definitions, read from pg_indexes)."""
        indexes = conn.execute(bench_query("point_indexes")).fetchall()
        for name, _ in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        conn.commit()
        per = max(1, 500_000 // self.series)
        done = 0
        for lo in range(s_lo, s_hi + 1, per):
            hi = min(s_hi, lo + per - 1)
            conn.execute(
                bench_query("load_points"),
                {
                    "t0": t0 + timedelta(seconds=(lo - s_lo) * slot_s),
                    "s_lo": lo,
                    "s_hi": hi,
                    "slot_s": slot_s,
                    "runs": self.runs,
                    "first_pk": self.first_pk,
                    "metrics": list(METRICS),
                    "total": self.total,
                },
            )
            conn.commit()
            done += (hi - lo + 1) * self.series
            progress(done)
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in indexes:
            conn.execute(definition)  # pg_get_indexdef() output of the migration's own index
        conn.commit()
        return done

    def load_initial(self, conn: psycopg.Connection, progress=lambda n: None) -> int:
        """The last `steps` steps of every series, over `days` days ending at `end`."""
        s_lo = self.total - self.steps
        slot = self.days * 86400 / self.steps
        n = self._load(conn, s_lo, self.total - 1, self.end - timedelta(days=self.days), slot, progress)
        self.loaded_from = s_lo
        return n

    def grow(self, conn: psycopg.Connection, progress=lambda n: None) -> int:
        """The steps before the initial load, over `days` more days before it."""
        if self.loaded_from == 0:
            return 0
        slot = self.days * 86400 / self.loaded_from
        n = self._load(
            conn, 0, self.loaded_from - 1, self.end - timedelta(days=2 * self.days), slot, progress
        )
        self.loaded_from = 0
        return n

    def store_state(self, conn: psycopg.Connection) -> None:
        """series_state and nonfinite_points as the SDK would have left them (see
        `check_state_with_sdk`)."""
        conn.execute("ANALYZE metric_points")
        conn.execute("SET LOCAL work_mem = '256MB'")
        span = {"first_pk": self.first_pk, "last_pk": self.run_pk(self.runs - 1), "tail": self.tail}
        conn.execute(bench_query("store_series_state"), span)
        conn.execute(bench_query("store_nonfinite_points"), span)
        conn.commit()
        conn.execute("ANALYZE series_state")
        conn.commit()

    def values(self, conn: psycopg.Connection, series: Sequence[tuple[int, int, int]]) -> list[float]:
        """bench_value for (r, step, m) triples (what the runs log next)."""
        rows = conn.execute(
            "SELECT bench_value(r, s, m, %(total)s) FROM unnest(%(r)s::int[], %(s)s::int[], %(m)s::int[]) "
            "WITH ORDINALITY AS x(r, s, m, i) ORDER BY i",
            {
                "total": self.total,
                "r": [x[0] for x in series],
                "s": [x[1] for x in series],
                "m": [x[2] for x in series],
            },
        ).fetchall()
        return [v for (v,) in rows]


def check_state_with_sdk(url: str, tail: int) -> int:
    """Log a few series through the SDK itself (NaN, infinities, more values than the tail,
    several flushes), then check that the SQL that builds the benchmark's series_state and
    nonfinite_points gives exactly what the SDK stored for them. Returns the number of
    series compared."""
    import engine
    from engine.sdk import session

    os.environ["ENGINE_DATABASE_URL"] = url
    from engine.settings import get_settings

    get_settings.cache_clear()
    rng = random.Random(7)
    t = datetime(2025, 1, 1, tzinfo=UTC)
    for name in ("a", "b"):
        with engine.init(project="/".join(CHECK_PROJECT), name=name, system_metrics_interval=0) as run:
            for part in range(3):
                for step in range(part * 70, (part + 1) * 70):
                    roll = rng.random()
                    value = (
                        math.nan
                        if roll < 0.05
                        else math.inf
                        if roll < 0.08
                        else -math.inf
                        if roll < 0.1
                        else rng.gauss(0, 1)
                    )
                    run.log(
                        {"loss": value, "accuracy": rng.random()}, step=step, time=t + timedelta(seconds=step)
                    )
                run.flush()
    session.close_all()
    with psycopg.connect(url) as conn:
        first_pk, last_pk = conn.execute(
            "SELECT min(r.id), max(r.id) FROM runs r JOIN projects p ON p.id = r.project_id "
            "WHERE p.entity = %s AND p.name = %s",
            CHECK_PROJECT,
        ).fetchone()
        span = {"first_pk": first_pk, "last_pk": last_pk, "tail": tail}
        ours = conn.execute(bench_query("series_state_from_points"), span).fetchall()
        sdks = conn.execute(bench_query("series_state_stored"), span).fetchall()
        nonfinite = conn.execute(bench_query("nonfinite_from_points"), span).fetchall()
        nonfinite_sdk = conn.execute(bench_query("nonfinite_stored"), span).fetchall()
    if ours != sdks or len(ours) != 4:
        raise SystemExit(f"series_state built with SQL differs from the SDK's:\n{ours[:1]}\n{sdks[:1]}")
    if nonfinite != nonfinite_sdk or not nonfinite:
        raise SystemExit(
            f"nonfinite_points built with SQL differ from the SDK's:\n{nonfinite[:1]}\n{nonfinite_sdk[:1]}"
        )
    return len(ours)


# -- new points through the SDK's writer -------------------------------------------------------
class Logger:
    """Logs points for the benchmark's runs through engine.sdk.buffer.Writer: binary COPY,
    upsert_series and one NOTIFY in one transaction per flush, exactly as run.log + flush."""

    def __init__(self, url: str, data: Dataset):
        self.data = data
        settings = settings_for(url)
        self.transport = Transport(url, settings, on_open=DatabaseTransport.prepare_connection)
        self.writer = Writer(DatabaseTransport(self.transport, settings.series_tail), settings)
        self.streams = [
            Stream(data.run_pk(r), f"bench/eval/run-{r}", step=data.total - 1) for r in range(data.runs)
        ]
        self.writer.note_keys(list(METRICS))
        self.logged_at = clock.now()  # the value time of the last points logged

    def plan(self, series: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """(r, step, m) of the next point of each (r, m); a run's metrics share its next step."""
        by_run: dict[int, list[int]] = {}
        for r, m in series:
            by_run.setdefault(r, []).append(m)
        return [(r, self.streams[r].step + 1, m) for r, ms in sorted(by_run.items()) for m in sorted(ms)]

    def log(self, conn: psycopg.Connection, series: Sequence[tuple[int, int]]) -> int:
        """One new point for each (r, m) in `series`, then one flush. Returns the points."""
        planned = self.plan(series)
        values = self.data.values(conn, planned)
        now = self.logged_at = clock.now()
        at = clock.to_micros(now)
        i = 0
        while i < len(planned):
            r, step = planned[i][0], planned[i][1]
            j = i
            while j < len(planned) and planned[j][0] == r:
                j += 1
            keys = tuple(METRICS[m] for _, _, m in planned[i:j])
            self.writer.append(self.streams[r], at, step, keys, tuple(values[i:j]))
            i = j
        self.writer.flush()
        return len(planned)

    def close(self) -> None:
        self.writer.stop()
        self.transport.drop()


def all_series(data: Dataset) -> list[tuple[int, int]]:
    return [(r, m) for r in range(data.runs) for m in range(len(METRICS))]


# -- automations ---------------------------------------------------------------------------------
PROBE_RULE = "latency-probe"
PROBE_METRIC = "grad_norm"
PROBE_VALUE = 1e6  # a probe logs this; nothing else comes near the threshold


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(q * len(values))))]


def make_rules(conn: psycopg.Connection, data: Dataset, count: int = 100, seed: int = 1) -> list[Automation]:
    """`count` automations in the benchmark project: the latency probe (window-1 threshold),
    one third change rules (10 vs 50), a tenth z-score rules (windows 10-50, every
    direction), a twentieth non-finite rules (every metric; all values, NaN only or the
    infinities), and threshold rules for the rest (every metric, windows 1-50, avg/min/max,
    all operators). Thresholds and amounts are quantiles of what a sample of the stored
    series gives at their newest value, for a firing fraction between 0 and 3 % of the runs,
    so that some rules fire and most do not."""
    rng = random.Random(seed)
    sample = conn.execute(
        "SELECT k.key, s.tail_value FROM series_state s JOIN metric_keys k ON k.id = s.key_id "
        "WHERE s.run_pk BETWEEN %s AND %s",
        (data.first_pk, data.first_pk + min(data.runs, 1000) - 1),
    ).fetchall()
    tails: dict[str, list[list[float]]] = {}
    for key, values in sample:
        tails.setdefault(key, []).append(values)
    agg = {"avg": lambda v: sum(v) / len(v), "min": min, "max": max}
    fractions = (0.0, 0.0, 0.0005, 0.002, 0.01, 0.03)
    project = "/".join(PROJECT)
    rules = [
        {
            "name": PROBE_RULE,
            "scope": {"project": project},
            "event": {
                "type": "run_metric_threshold",
                "metric": PROBE_METRIC,
                "window": 1,
                "aggregation": "max",
                "operator": ">",
                "threshold": PROBE_VALUE / 10,
            },
            "action": {"type": "no_op"},
        }
    ]
    n_change, n_zscore, n_nonfinite = count // 3, count // 10, count // 20
    for i in range(count - 1 - n_change - n_zscore - n_nonfinite):
        metric = METRICS[i % len(METRICS)]
        window = rng.choice((1, 3, 5, 5, 10, 20, 50))
        aggregation = rng.choice(("avg", "avg", "min", "max"))
        operator = rng.choice((">", ">=", "<", "<="))
        f = rng.choice(fractions)
        got = [agg[aggregation](t[-window:]) for t in tails[metric] if len(t) >= window]
        if f == 0:  # never fires: beyond anything stored
            threshold = (
                (max(got) + abs(max(got)) + 1) if operator[0] == ">" else (min(got) - abs(min(got)) - 1)
            )
        else:
            threshold = _quantile(got, 1 - f) if operator[0] == ">" else _quantile(got, f)
        rules.append(
            {
                "name": f"threshold-{i:02d}-{metric}-{aggregation}{window}",
                "scope": {"project": project},
                "event": {
                    "type": "run_metric_threshold",
                    "metric": metric,
                    "window": window,
                    "aggregation": aggregation,
                    "operator": operator,
                    "threshold": float(threshold),
                },
                "action": {"type": "no_op"},
            }
        )
    for i in range(n_change):
        metric = METRICS[i % len(METRICS)]
        aggregation = rng.choice(("avg", "avg", "avg", "min", "max"))
        change = rng.choice(("relative", "absolute"))
        direction = rng.choice(("increase", "decrease", "any"))
        f = rng.choice(fractions)
        d = []
        for t in tails[metric]:
            if len(t) >= 60:
                cur, prior = agg[aggregation](t[-10:]), agg[aggregation](t[-60:-10])
                if change == "absolute":
                    d.append(cur - prior)
                elif prior != 0:
                    d.append((cur - prior) / abs(prior))
        signed = {"increase": d, "decrease": [-x for x in d], "any": [abs(x) for x in d]}[direction]
        top = max(signed, default=1.0)
        amount = top * 2 + 1 if f == 0 or not signed else _quantile(signed, 1 - f)
        if amount <= 0:  # the change goes the other way in almost every run
            amount = abs(top) * 2 + 1e-9 if top > 0 else 1e-6
        rules.append(
            {
                "name": f"change-{i:02d}-{metric}-{aggregation}-{change}-{direction}",
                "scope": {"project": project},
                "event": {
                    "type": "run_metric_change",
                    "metric": metric,
                    "current_window": 10,
                    "prior_window": 50,
                    "aggregation": aggregation,
                    "change": change,
                    "direction": direction,
                    "amount": float(amount),
                },
                "action": {"type": "no_op"},
            }
        )
    for i in range(n_zscore):
        metric = METRICS[i % len(METRICS)]
        window = rng.choice((10, 20, 30, 50))
        direction = rng.choice(("increase", "decrease", "any"))
        f = rng.choice(fractions)
        z = []
        for t in tails[metric]:
            if len(t) > window:
                sigma = statistics.pstdev(t[-window - 1 : -1])
                if sigma > 0:
                    z.append((t[-1] - statistics.fmean(t[-window - 1 : -1])) / sigma)
        signed = {"increase": z, "decrease": [-x for x in z], "any": [abs(x) for x in z]}[direction]
        top = max(signed, default=1.0)
        threshold = abs(top) * 2 + 1 if f == 0 or not signed else _quantile(signed, 1 - f)
        rules.append(
            {
                "name": f"zscore-{i:02d}-{metric}-{window}-{direction}",
                "scope": {"project": project},
                "event": {
                    "type": "run_metric_zscore",
                    "metric": metric,
                    "window": window,
                    "threshold": float(max(threshold, 1.0)),  # > 0; below 1 most values would fire
                    "direction": direction,
                },
                "action": {"type": "no_op"},
            }
        )
    # loss goes NaN and throughput +Infinity now and then (bench_value), what most of these
    # rules watch; grad_norm never does (the rule of a metric that stays finite)
    for i in range(n_nonfinite):
        metric = ("loss", "throughput", "loss", "grad_norm", "throughput")[i % 5]
        values = rng.choice(
            {"loss": (None, ("nan",)), "throughput": (None, ("inf", "-inf"))}.get(
                metric, (None, ("nan",), ("inf", "-inf"))
            )
        )
        event: dict[str, object] = {"type": "run_metric_nonfinite", "metric": metric}
        if values is not None:
            event["values"] = list(values)
        rules.append(
            {
                "name": f"nonfinite-{i:02d}-{metric}-{'-'.join(values or ('all',))}",
                "scope": {"project": project},
                "event": event,
                "action": {"type": "no_op"},
            }
        )
    return [Automation.model_validate(r) for r in rules]
