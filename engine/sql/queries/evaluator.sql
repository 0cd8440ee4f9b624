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
-- A tick's commit does not wait for its WAL to reach the disk (a flush that other writers
-- queue behind takes up to ~60 ms): a tick is recomputed from the points, which were durable
-- before it could see them. A crash can lose the last ticks' commits, frontiers with their
-- triggers, and the next tick fires the same causes again (the unique key holds). Nothing
-- lost had gone out: a delivery is sent after its claim commits, durably, and that flush
-- covers every commit the claim could see; a stop request reaches a run in the answer to
-- its next write, also a durable commit after it.
SELECT set_config('plan_cache_mode', 'force_generic_plan', false), set_config('jit', 'off', false),
       set_config('synchronous_commit', 'off', false),
       set_config('statement_timeout', %(statement_timeout_ms)s, false);

-- name: activity
-- What was written in [from_xid, to_xid), to skip automations with nothing new: per metric
-- the newest write and how many series were written to (to share the work out among
-- connections), per event type the newest event, per metric the newest non-finite value.
SELECT 'metric' AS kind, k.key AS name, max(b.xid)::text AS newest, count(DISTINCT b.run_pk) AS series
FROM series_batches b
JOIN metric_keys k ON k.id = b.key_id
WHERE b.xid >= %(from_xid)s::xid8 AND b.xid < %(to_xid)s::xid8
GROUP BY k.key
UNION ALL
SELECT 'event', e.type, max(e.xid)::text, 0
FROM events e
WHERE e.xid >= %(from_xid)s::xid8 AND e.xid < %(to_xid)s::xid8
GROUP BY e.type
UNION ALL
SELECT 'nonfinite', k.key, max(n.xid)::text, 0
FROM nonfinite_points n
JOIN metric_keys k ON k.id = n.key_id
WHERE n.xid >= %(from_xid)s::xid8 AND n.xid < %(to_xid)s::xid8
GROUP BY k.key;

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
-- Cooldown: the latest value time each of these automations fired at for each run (as the
-- metric rules' statements read it, through the cooldown index).
SELECT DISTINCT ON (automation_id, run_pk) automation_id, run_pk, value_time
FROM triggers
WHERE automation_id = ANY(%(ids)s) AND run_pk = ANY(%(run_pks)s)
ORDER BY automation_id, run_pk, value_time DESC;

-- name: fire_metric_group
-- A metric group's tails-only query (`{group}`, its rows ordered by rule, run, position,
-- its windows as arrays)
-- whose firings become triggers in the same statement, without a round trip through the
-- evaluator, whenever its rows alone decide the per-run cooldown: every series' tail
-- sufficed (no `rule` 0 row) and no rule with a cooldown has two values of one run (the query
-- already left out the values within the cooldown of the last firing, so a lone one fires).
-- Then the triggers are inserted in firing order (rule, run, position: the ids follow it), a
-- firing already recorded skipped by the unique key, and ONE row comes back, `rule` -1, with
-- the ids, automations and runs of those inserted (for their deliveries: `insert_triggers`).
-- Otherwise nothing is inserted and the query's rows come back as they are: the evaluator
-- applies the cooldown value by value, or runs the query that reads the hypertable. The
-- trigger's columns are those `engine/evaluation/firing.py` writes for a metric firing.
WITH found AS MATERIALIZED (
{group}
), decided AS (
    SELECT NOT EXISTS (
        SELECT 1 FROM found f WHERE f.rule = 0
        UNION ALL
        SELECT 1 FROM found f
        WHERE (CAST(%(cooldown_us)s AS BIGINT[]))[f.rule] IS NOT NULL
        GROUP BY f.rule, f.run_pk HAVING count(*) > 1
    ) AS here
), fired AS (
    INSERT INTO triggers (
        fired_at, automation_id, automation_version, event_type, cause, run_pk, metric, step,
        value_time, value, window_values, prior_values, current_aggregate, prior_aggregate, details,
        key_id, pos, window_size, prior_window_size, aggregation, operator, threshold, change, direction, amount)
    SELECT clock_timestamp(), r.automation_id, r.version, r.event_type,
           'metric:' || f.run_pk || ':' || f.key_id || ':' || f.pos, f.run_pk, CAST(%(metric)s AS TEXT), f.step,
           f.time, f.aggregate, f.window_values, CASE WHEN r.is_change THEN f.prior_values END,
           CASE WHEN r.is_change THEN f.current_aggregate ELSE f.aggregate END,
           CASE WHEN r.is_change THEN f.prior_aggregate END,
           jsonb_build_object('metric_filter', r.condition, 'value', f.value, 'position', f.pos),
           f.key_id, f.pos, r.window_size, r.prior_window_size, r.aggregation, r.operator, r.threshold,
           r.change, r.direction, r.amount
    FROM found f
    CROSS JOIN decided d
    CROSS JOIN LATERAL (
        SELECT (CAST(%(automation_id)s AS BIGINT[]))[f.rule] AS automation_id,
               (CAST(%(fire_version)s AS INT[]))[f.rule] AS version,
               (CAST(%(fire_event_type)s AS TEXT[]))[f.rule] AS event_type,
               (CAST(%(fire_condition)s AS TEXT[]))[f.rule] AS condition,
               (CAST(%(fire_is_change)s AS BOOLEAN[]))[f.rule] AS is_change,
               (CAST(%(fire_window_size)s AS INT[]))[f.rule] AS window_size,
               (CAST(%(fire_prior_window_size)s AS INT[]))[f.rule] AS prior_window_size,
               (CAST(%(fire_aggregation)s AS TEXT[]))[f.rule] AS aggregation,
               (CAST(%(fire_operator)s AS TEXT[]))[f.rule] AS operator,
               (CAST(%(fire_threshold)s AS DOUBLE PRECISION[]))[f.rule] AS threshold,
               (CAST(%(fire_change)s AS TEXT[]))[f.rule] AS change,
               (CAST(%(fire_direction)s AS TEXT[]))[f.rule] AS direction,
               (CAST(%(fire_amount)s AS DOUBLE PRECISION[]))[f.rule] AS amount
    ) r
    WHERE d.here AND f.rule > 0
    ORDER BY f.rule, f.run_pk, f.pos
    ON CONFLICT (automation_id, cause) DO NOTHING
    RETURNING id, automation_id, run_pk
)
SELECT f.run_pk, f.key_id, f.pos, f.step, f.time, f.value, f.aggregate, CAST(f.window_values AS TEXT) AS window_values,
       f.prior_aggregate, CAST(f.prior_values AS TEXT) AS prior_values, f.current_aggregate, f.rule, f.last_fired,
       CAST(NULL AS BIGINT[]) AS fired_ids, CAST(NULL AS BIGINT[]) AS fired_automations,
       CAST(NULL AS BIGINT[]) AS fired_runs
FROM found f
WHERE NOT (SELECT d.here FROM decided d)
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, -1, NULL,
       array_agg(i.id ORDER BY i.id), array_agg(i.automation_id ORDER BY i.id), array_agg(i.run_pk ORDER BY i.id)
FROM fired i
HAVING (SELECT d.here FROM decided d)
ORDER BY rule, run_pk, pos;

-- name: insert_triggers
-- The triggers of one evaluation (JSON rows, `n` their firing order: ids follow it) and one
-- delivery per action of each trigger inserted (the outbox), in one statement. A firing
-- already recorded is skipped by the unique key, and so are its deliveries.
-- How much is sent (engine/actions/flow.py; the actions' gates are locked by the statement
-- before this one, so the counts below see every delivery committed before): a trigger under
-- an active silence gets `silenced` deliveries; one beyond its action's rate limit
-- (`rate_count` deliveries in the last `rate_per_seconds`), `suppressed`; a digested action's
-- trigger gets no delivery but joins the action's open window, or opens one.
-- A stop_run action's delivery is final at once: `succeeded` with its stop request written
-- here (the request is all there is to deliver), `skipped` when the run is no longer running.
-- `fired_ids` (with their automations and runs): triggers of the same transaction that metric
-- groups inserted themselves (`fire_metric_group`), whose deliveries are made here too.
WITH inserted AS (
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
    RETURNING id, automation_id, run_pk, event_id, artifact_version_id
), fired AS (
    SELECT i.id, i.automation_id, i.run_pk, i.event_id, i.artifact_version_id FROM inserted i
    UNION ALL
    SELECT g.id, g.automation_id, g.run_pk, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT)
    FROM unnest(CAST(%(fired_ids)s AS BIGINT[]), CAST(%(fired_automations)s AS BIGINT[]),
                CAST(%(fired_runs)s AS BIGINT[])) AS g(id, automation_id, run_pk)
), planned AS (
    SELECT f.id AS trigger_id, f.automation_id, f.run_pk, a.action_index, a.action_type, a.action, a.status,
           a.max_attempts, a.digest_seconds, a.rate_count, a.rate_per_seconds, a.rate_text, s.id AS silence_id,
           s.reason AS silence_reason
    FROM fired f
    JOIN jsonb_to_recordset(%(actions)s) AS a(automation_id bigint, action_index integer, action_type text,
                                             action jsonb, status text, max_attempts integer,
                                             digest_seconds double precision, rate_count integer,
                                             rate_per_seconds double precision, rate_text text)
      ON a.automation_id = f.automation_id
    LEFT JOIN LATERAL (
        SELECT s.id, s.reason FROM silences s
        WHERE s.starts_at <= %(now)s AND s.ends_at > %(now)s
          AND (s.automation_id = f.automation_id
               OR (s.entity, s.project) IN (
                   SELECT p.entity, p.name FROM projects p
                   WHERE p.id IN ((SELECT r.project_id FROM runs r WHERE r.id = f.run_pk),
                                  (SELECT c.project_id FROM artifact_versions v
                                   JOIN artifact_collections c ON c.id = v.collection_id
                                   WHERE v.id = f.artifact_version_id),
                                  (SELECT e.project_id FROM events e WHERE e.id = f.event_id))))
        ORDER BY s.id LIMIT 1
    ) s ON true
), used AS (
    -- what each rate-limited action has sent in its period (being sent, or to be, counts)
    SELECT k.automation_id, k.action_index, count(d.id) AS sent
    FROM (SELECT DISTINCT automation_id, action_index, rate_per_seconds FROM planned
          WHERE rate_count IS NOT NULL AND digest_seconds IS NULL) k
    LEFT JOIN deliveries d
      ON d.automation_id = k.automation_id AND d.action_index = k.action_index
     AND d.created_at > %(now)s::timestamptz - make_interval(secs => k.rate_per_seconds)
     AND d.status NOT IN ('suppressed', 'silenced', 'skipped')
    GROUP BY k.automation_id, k.action_index
), decided AS (
    SELECT p.*,
           CASE WHEN p.silence_id IS NOT NULL THEN 'silenced'
                WHEN p.rate_count IS NOT NULL AND p.status = 'pending'
                     AND u.sent + row_number() OVER (PARTITION BY p.automation_id, p.action_index, p.silence_id IS NULL
                                                     ORDER BY p.trigger_id) > p.rate_count
                THEN 'suppressed'
                WHEN p.action_type = 'stop_run'
                     AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = p.run_pk AND r.state = 'running')
                THEN 'skipped'
                ELSE p.status END AS decision
    FROM planned p
    LEFT JOIN used u ON u.automation_id = p.automation_id AND u.action_index = p.action_index
    WHERE p.silence_id IS NOT NULL OR p.digest_seconds IS NULL
), queued AS (
    INSERT INTO deliveries (trigger_id, automation_id, action_index, action_type, action, status,
                            max_attempts, next_attempt_at, finished_at, created_at, silence_id, last_error)
    SELECT d.trigger_id, d.automation_id, d.action_index, d.action_type, d.action, d.decision, d.max_attempts,
           %(now)s, CASE WHEN d.decision <> 'pending' THEN %(now)s::timestamptz END, %(now)s, d.silence_id,
           CASE d.decision
               WHEN 'silenced' THEN 'silenced by silence ' || d.silence_id || ': ' || d.silence_reason
               WHEN 'suppressed' THEN 'rate limit reached (' || d.rate_text || ')'
               WHEN 'skipped' THEN CASE WHEN d.action_type = 'stop_run' THEN 'the run was no longer running' END
           END
    FROM decided d
), stopped AS (
    INSERT INTO stop_requests (trigger_id, run_pk, automation, requested_at)
    SELECT d.trigger_id, d.run_pk, a.name, %(now)s
    FROM decided d JOIN automations a ON a.id = d.automation_id
    WHERE d.action_type = 'stop_run' AND d.decision = 'succeeded'
), digested AS (
    SELECT p.* FROM planned p WHERE p.silence_id IS NULL AND p.digest_seconds IS NOT NULL
), open_window AS (
    SELECT DISTINCT ON (g.automation_id, g.action_index) g.id, g.automation_id, g.action_index
    FROM digests g
    WHERE g.closed_at IS NULL AND g.closes_at > %(now)s
      AND (g.automation_id, g.action_index) IN (SELECT automation_id, action_index FROM digested)
    ORDER BY g.automation_id, g.action_index, g.closes_at DESC
), opened AS (
    INSERT INTO digests (automation_id, action_index, action_type, action, max_attempts, rate_count,
                         rate_per_seconds, rate_text, opened_at, closes_at, first_trigger_id)
    SELECT DISTINCT ON (d.automation_id, d.action_index)
           d.automation_id, d.action_index, d.action_type, d.action, d.max_attempts, d.rate_count,
           d.rate_per_seconds, d.rate_text, %(now)s, %(now)s::timestamptz + make_interval(secs => d.digest_seconds),
           d.trigger_id
    FROM digested d
    WHERE NOT EXISTS (SELECT 1 FROM open_window o
                      WHERE o.automation_id = d.automation_id AND o.action_index = d.action_index)
    ORDER BY d.automation_id, d.action_index, d.trigger_id
    RETURNING id, automation_id, action_index
), joined AS (
    INSERT INTO digest_members (digest_id, trigger_id)
    SELECT coalesce(o.id, n.id), d.trigger_id
    FROM digested d
    LEFT JOIN open_window o ON o.automation_id = d.automation_id AND o.action_index = d.action_index
    LEFT JOIN opened n ON n.automation_id = d.automation_id AND n.action_index = d.action_index
)
SELECT count(*) FROM inserted;

-- name: prune_series_batches
-- Watermark rows that every enabled automation has passed are no longer needed: the oldest
-- %(limit)s of them go (a tick deletes about what ticks write; a backlog, such as the rows of
-- ticks that every series got a value in, drains over the next ticks instead of in one).
-- (Their ids as an array: the rows are found by key, never by a scan of the table, whatever
-- the planner estimates the backlog to be.)
DELETE FROM series_batches
WHERE id = ANY(ARRAY(
    SELECT b.id FROM series_batches b
    WHERE b.xid < least(
        (SELECT min(s.frontier) FROM automation_state s JOIN automations a ON a.id = s.automation_id WHERE a.enabled),
        pg_snapshot_xmin(pg_current_snapshot()))
    ORDER BY b.xid
    LIMIT %(limit)s));

-- name: run_labels
SELECT r.id, r.run_id, r.name FROM runs r WHERE r.id = ANY(%(run_pks)s);

-- name: database_now
-- The database's clock: what stall rules measure against (the runs' stamps are on it).
SELECT now() AS now;
