-- Hand-written queries of the evaluation service (engine/evaluation/).

-- name: tick_state
-- What a tick starts from, in one round trip: a cheap fingerprint of the automations (are
-- they re-read?), the new frontier (every transaction with an xid below the snapshot's xmin
-- has finished: what it wrote is final) and the enabled automations' ids per frontier and
-- consecutive failures (one row each; usually a few: automations evaluated together share
-- their frontier). With no enabled automation, one row without ids.
WITH head AS (
    SELECT (SELECT md5(coalesce(string_agg(id || ':' || version || ':' || enabled, ',' ORDER BY id), ''))
            FROM automations) AS fingerprint,
           pg_snapshot_xmin(pg_current_snapshot())::text AS to_xid
)
SELECT h.fingerprint, h.to_xid, f.frontier, f.failures, f.ids
FROM head h
LEFT JOIN (
    SELECT s.frontier::text AS frontier, s.failures, array_agg(s.automation_id) AS ids
    FROM automation_state s JOIN automations a ON a.id = s.automation_id
    WHERE a.enabled
    GROUP BY s.frontier, s.failures
) f ON true;

-- name: evaluator_session
-- The evaluator runs the same few query shapes every tick (prepared at once). A generic
-- plan is made once per connection: a custom plan would expand every chunk of the
-- hypertables in the rare hypertable branch of a rule query, each time and per automation,
-- a cost that grows with the data. No JIT: row estimates over that branch can pass jit_above_cost,
-- and compiling costs seconds for queries that run in milliseconds. The statement timeout
-- holds for every statement of a tick.
SELECT set_config('plan_cache_mode', 'force_generic_plan', false), set_config('jit', 'off', false),
       set_config('statement_timeout', %(statement_timeout_ms)s, false);

-- name: activity
-- What was written in [from_xid, to_xid), to skip automations with nothing new: per metric
-- the newest write and how many series were written to (to share the work out among
-- connections), per event type the newest event.
SELECT 'metric' AS kind, k.key AS name, max(b.xid)::text AS newest, count(DISTINCT b.run_pk) AS series
FROM series_batches b
JOIN metric_keys k ON k.id = b.key_id
WHERE b.xid >= %(from_xid)s::xid8 AND b.xid < %(to_xid)s::xid8
GROUP BY k.key
UNION ALL
SELECT 'event', e.type, max(e.xid)::text, 0
FROM events e
WHERE e.xid >= %(from_xid)s::xid8 AND e.xid < %(to_xid)s::xid8
GROUP BY e.type;

-- name: lock_states
-- One evaluator at a time per automation; another service skips those it holds for this tick.
SELECT automation_id, frontier::text FROM automation_state
WHERE automation_id = ANY(%(ids)s)
ORDER BY automation_id
FOR UPDATE SKIP LOCKED;

-- name: advance_frontiers
UPDATE automation_state
SET frontier = greatest(frontier, %(to_xid)s::xid8), evaluated_at = now(), last_error = NULL, failures = 0
WHERE automation_id = ANY(%(ids)s);

-- name: advance_frontiers_partially
-- A catch-up evaluated the first part of its span: the frontier moves, and the next part
-- may be twice as long (failures - 1, but it stays in catch-up until it reaches the end).
UPDATE automation_state
SET frontier = greatest(frontier, %(to_xid)s::xid8), evaluated_at = now(), failures = greatest(failures - 1, 1)
WHERE automation_id = ANY(%(ids)s);

-- name: catch_up_end
-- Where the try of a metric automation that failed last time stops: after the first
-- 1/2^failures of the flushes of its metric in [from_xid, to_xid) (at least one), so that a
-- backlog too long for one statement is evaluated in parts. NULL: no cut (to_xid).
WITH xids AS (
    SELECT DISTINCT b.xid
    FROM series_batches b
    JOIN metric_keys k ON k.id = b.key_id
    WHERE k.key = %(metric)s AND b.xid >= %(from_xid)s::xid8 AND b.xid < %(to_xid)s::xid8
)
SELECT (SELECT x.xid FROM xids x ORDER BY x.xid
        OFFSET greatest(1, (SELECT count(*) FROM xids) >> %(failures)s) LIMIT 1)::text AS end_xid;

-- name: advance_idle_frontiers
-- Automations with nothing new: move their frontier without evaluating (skip those being evaluated).
UPDATE automation_state s
SET frontier = greatest(s.frontier, %(to_xid)s::xid8), evaluated_at = now()
WHERE s.automation_id IN (
    SELECT automation_id FROM automation_state
    WHERE automation_id = ANY(%(ids)s) AND frontier < %(to_xid)s::xid8
    FOR UPDATE SKIP LOCKED
);

-- name: record_failure
UPDATE automation_state
SET last_error = %(error)s, last_error_at = now(), failures = failures + 1
WHERE automation_id = %(automation_id)s;

-- name: last_fired
-- Cooldown: the value time of the latest firing of each of these automations for each run.
SELECT DISTINCT ON (automation_id, run_pk) automation_id, run_pk, value_time
FROM triggers
WHERE automation_id = ANY(%(ids)s) AND run_pk = ANY(%(run_pks)s)
ORDER BY automation_id, run_pk, id DESC;

-- name: insert_triggers
-- The triggers of one evaluation (JSON rows, `n` their firing order: ids follow it) and one
-- delivery per action of each trigger inserted (the outbox), in one statement. A firing
-- already recorded is skipped by the unique key, and so are its deliveries.
WITH fired AS (
    INSERT INTO triggers (
        fired_at, automation_id, automation_version, event_type, cause, run_pk, event_id, metric, step,
        value_time, value, window_values, prior_values, current_aggregate, prior_aggregate,
        alias, tag, artifact_version_id, details,
        key_id, pos, window_size, prior_window_size, aggregation, operator, threshold, change, direction, amount)
    -- the time of the insert, not of the transaction's start (a tick's transaction can be
    -- long, and two connections insert concurrently): fired_at follows the ids closely
    SELECT clock_timestamp(), t.automation_id, t.automation_version, t.event_type, t.cause, t.run_pk, t.event_id, t.metric,
           t.step, t.value_time, t.value, t.window_values, t.prior_values, t.current_aggregate,
           t.prior_aggregate, t.alias, t.tag, t.artifact_version_id, coalesce(t.details, '{}'::jsonb),
           t.key_id, t.pos, t.window_size, t.prior_window_size, t.aggregation, t.operator, t.threshold,
           t.change, t.direction, t.amount
    FROM jsonb_to_recordset(%(triggers)s) AS t(
        automation_id bigint, automation_version integer, event_type text, cause text, run_pk bigint,
        event_id bigint, metric text, step bigint, value_time timestamptz, value double precision,
        window_values double precision[], prior_values double precision[], current_aggregate double precision,
        prior_aggregate double precision, alias text, tag text, artifact_version_id bigint, details jsonb, n bigint,
        key_id integer, pos bigint, window_size integer, prior_window_size integer, aggregation text,
        operator text, threshold double precision, change text, direction text, amount double precision)
    ORDER BY t.n
    ON CONFLICT (automation_id, cause) DO NOTHING
    RETURNING id, automation_id
), queued AS (
    INSERT INTO deliveries (trigger_id, automation_id, action_index, action_type, action, status,
                            max_attempts, next_attempt_at, finished_at)
    SELECT f.id, f.automation_id, a.action_index, a.action_type, a.action, a.status, a.max_attempts,
           %(now)s, CASE WHEN a.status = 'skipped' THEN %(now)s::timestamptz END
    FROM fired f
    JOIN jsonb_to_recordset(%(actions)s) AS a(automation_id bigint, action_index integer, action_type text,
                                             action jsonb, status text, max_attempts integer)
      ON a.automation_id = f.automation_id
)
SELECT count(*) FROM fired;

-- name: prune_series_batches
-- Watermark rows that every enabled automation has passed are no longer needed.
DELETE FROM series_batches
WHERE xid < least(
    (SELECT min(s.frontier) FROM automation_state s JOIN automations a ON a.id = s.automation_id WHERE a.enabled),
    pg_snapshot_xmin(pg_current_snapshot()));

-- name: run_labels
SELECT r.id, r.run_id, r.name FROM runs r WHERE r.id = ANY(%(run_pks)s);
