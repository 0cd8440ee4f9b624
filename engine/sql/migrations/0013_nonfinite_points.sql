-- The non-finite values (NaN, ±Infinity) of every series, apart: the per-series tails and
-- positions hold finite values only, and a rule on non-finite values must not search the
-- hypertable each tick. The SDK's flush already finds these values in Python (it counts the
-- finite ones); it writes them here in the same transaction as the points, so a row exists
-- exactly when its point does. `xid` is the writing transaction (the evaluators' watermark,
-- as in series_batches); `seq` is the point's own (metric_points/system_metrics), which makes
-- (run_pk, key_id, seq) the trigger's exactly-once key. Rare rows: a table, not a hypertable.
CREATE TABLE nonfinite_points (
    run_pk bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key_id integer NOT NULL REFERENCES metric_keys (id),
    seq    bigint NOT NULL,
    step   bigint NOT NULL,
    "time" timestamptz NOT NULL,
    value  double precision NOT NULL CHECK (NOT is_finite_value(value)),
    xid    xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (run_pk, key_id, seq)
);
CREATE INDEX nonfinite_points_xid ON nonfinite_points (xid);
CREATE INDEX nonfinite_points_key_time ON nonfinite_points (key_id, "time");

-- Non-finite values logged before this migration, found once here.
INSERT INTO nonfinite_points (run_pk, key_id, seq, step, "time", value)
SELECT m.run_pk, m.key_id, m.seq, m.step, m.time, m.value FROM metric_points m WHERE NOT is_finite_value(m.value)
UNION ALL
SELECT m.run_pk, m.key_id, m.seq, m.step, m.time, m.value FROM system_metrics m WHERE NOT is_finite_value(m.value)
ON CONFLICT DO NOTHING;

-- Stalled runs: when each run last got a metric value (system metrics do not count: a hung
-- training loop keeps sampling), stamped by the SDK's flush on the database's clock in the
-- transaction of the values, so that a check of the running runs reads one row per run and
-- never the points. NULL: none yet (the run's start counts).
ALTER TABLE runs ADD COLUMN last_metric_at timestamptz;
-- The running runs of a project by their last metric value (or start): a stall check reads
-- the range of them whose deadline passed since its last check (its cost follows them).
CREATE INDEX runs_running ON runs (project_id, (coalesce(last_metric_at, created_at))) WHERE state = 'running';
-- Every pause of at least a minute (the shortest `after`) between a run's metric values (or
-- from its start to its first), recorded by the flush that ended it: a backtest of a stall
-- rule answers from these and the runs' open pauses, not from the points.
CREATE TABLE run_metric_gaps (
    run_pk  bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    from_at timestamptz NOT NULL,
    to_at   timestamptz NOT NULL,
    PRIMARY KEY (run_pk, from_at)
);
