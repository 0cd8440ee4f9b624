-- The synthetic dataset of the evaluation benchmarks (bench/support/dataset.py).
-- Blocks are loaded by name, like engine/sql/queries/*.sql.

-- name: create_noise_function
-- A uniform number in [0, 1] from a key (an inlinable SQL expression: no FROM, no CTE).
CREATE OR REPLACE FUNCTION bench_u(x bigint) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (hashint8(x) & 2147483647)::float8 / 2147483647
$$;

-- name: create_value_function
-- The value of metric m (0..4: loss, accuracy, lr, grad_norm, throughput) of run r at step
-- s, out of `total` steps: deterministic, so the bulk load (SQL) and the points logged
-- through the SDK later (Python asks for them) follow one formula. Loss and accuracy
-- follow a training curve, lr is constant per run (a sweep), grad_norm and throughput are
-- stationary, so that a point logged later looks like the history. About 0.1 % of loss
-- values are NaN and 0.05 % of throughput values +Infinity (the SDK keeps them out of
-- the tails); grad_norm spikes on 0.5 % of its values. A single expression, so that the
-- planner inlines it (a function call per row would cost ~50 us).
CREATE OR REPLACE FUNCTION bench_value(r integer, s integer, m integer, total integer)
RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE m
        WHEN 0 THEN CASE WHEN bench_u((r::bigint * 100003 + s) * 8 + 4) < 0.001 THEN 'NaN'::float8
                         ELSE (0.2 + 1.8 * bench_u(r::bigint * 8 + 7)) * exp(-3.0 * s / total)
                              * (1 + 0.3 * (bench_u((r::bigint * 100003 + s) * 8) - 0.5)) END
        WHEN 1 THEN least(1.0, greatest(0.0,
                         0.3 + 0.65 * (1 - exp(-3.0 * s / total)) * (0.5 + 0.5 * bench_u(r::bigint * 8 + 7))
                         + 0.08 * (bench_u((r::bigint * 100003 + s) * 8 + 1) - 0.5)))
        WHEN 2 THEN 3e-4 * (0.5 + bench_u(r::bigint * 8 + 7)) * (1 + 0.01 * bench_u((r::bigint * 100003 + s) * 8 + 2))
        WHEN 3 THEN CASE WHEN bench_u((r::bigint * 100003 + s) * 8 + 7) < 0.005
                         THEN 20 + 80 * bench_u((r::bigint * 100003 + s) * 8 + 3)
                         ELSE 1 + 0.5 * bench_u((r::bigint * 100003 + s) * 8 + 3) END
        ELSE CASE WHEN bench_u((r::bigint * 100003 + s) * 8 + 6) < 0.0005 THEN 'Infinity'::float8
                  ELSE 900 + 200 * bench_u(r::bigint * 8 + 7) + 50 * (bench_u((r::bigint * 100003 + s) * 8 + 5) - 0.5) END
    END
$$;

-- name: point_indexes
-- The indexes of metric_points (the migration's), dropped during a bulk load and rebuilt
-- from these definitions afterwards: a sorted build is far faster than 10^7 inserts.
SELECT i.indexname, i.indexdef
FROM pg_indexes i
WHERE i.schemaname = 'public' AND i.tablename = 'metric_points'
ORDER BY i.indexname;

-- name: create_runs
-- Runs r = 0 .. n-1 of the project get consecutive ids; returns the first one.
WITH made AS (
    INSERT INTO runs (project_id, run_id, name, user_name, state, created_at, updated_at)
    SELECT %(project_id)s, 'run-' || lpad(r::text, 5, '0'), 'run-' || r, 'bench', 'running', %(at)s, %(at)s
    FROM generate_series(0, %(n)s - 1) AS r
    ORDER BY r
    RETURNING id
)
SELECT min(id), max(id), count(*) FROM made;

-- name: load_points
-- Steps [s_lo, s_hi] of every series, generated in time order (so rows reach one chunk at
-- a time). Step s is the (s+1)th flush of the history: seq = ((s + 1) << 20) | ordinal,
-- which orders a series' points as the SDK's seq would. Times: step s_lo starts at t0,
-- each step takes `slot_s` seconds, runs are spread within a step.
INSERT INTO metric_points (time, run_pk, key_id, step, seq, value)
SELECT %(t0)s::timestamptz + make_interval(secs => ((s - %(s_lo)s) + r::float8 / %(runs)s) * %(slot_s)s),
       %(first_pk)s + r, k.id, s,
       ((s + 1)::bigint << 20) | (r * 5 + k.m),
       bench_value(r, s, k.m, %(total)s)
FROM generate_series(%(s_lo)s::integer, %(s_hi)s::integer) AS s
CROSS JOIN generate_series(0, %(runs)s - 1) AS r
CROSS JOIN (SELECT id, array_position(%(metrics)s::text[], key) - 1 AS m
            FROM metric_keys WHERE key = ANY(%(metrics)s::text[])) AS k
ORDER BY s, r, k.m;

-- name: create_state_function
-- What the SDK's ingest (upsert_series) leaves in series_state for the runs of a project:
-- the number of finite values and the last `tail` of them, oldest first (seq order), for
-- the runs whose ids lie in [first_pk, last_pk].
CREATE OR REPLACE FUNCTION bench_series_state(first_pk bigint, last_pk bigint, tail integer)
RETURNS TABLE (key_id integer, run_pk bigint, n_finite bigint, tail_step bigint[],
               tail_time timestamptz[], tail_value double precision[])
LANGUAGE sql STABLE AS $$
    -- sorted once (in the order of the (run_pk, key_id, seq) index: a merge of the chunks'
    -- index scans), then aggregated in that order, instead of one sort per array
    SELECT o.key_id, o.run_pk, count(*),
           (array_agg(o.step))[greatest(1, count(*) - tail + 1):],
           (array_agg(o.time))[greatest(1, count(*) - tail + 1):],
           (array_agg(o.value))[greatest(1, count(*) - tail + 1):]
    FROM (
        SELECT m.key_id, m.run_pk, m.seq, m.step, m.time, m.value
        FROM metric_points m
        WHERE m.run_pk BETWEEN first_pk AND last_pk
          AND m.value < 'Infinity'::float8 AND m.value > '-Infinity'::float8  -- also false for NaN
        ORDER BY m.run_pk, m.key_id, m.seq
    ) AS o
    GROUP BY o.run_pk, o.key_id
$$;

-- name: series_state_from_points
SELECT * FROM bench_series_state(%(first_pk)s, %(last_pk)s, %(tail)s) ORDER BY key_id, run_pk;

-- name: series_state_stored
SELECT key_id, run_pk, n_finite, tail_step, tail_time, tail_value
FROM series_state
WHERE run_pk BETWEEN %(first_pk)s AND %(last_pk)s
ORDER BY key_id, run_pk;

-- name: store_series_state
-- (Re)builds the series_state of a project's runs from its points (initial load, growth).
INSERT INTO series_state AS s (key_id, run_pk, n_finite, tail_step, tail_time, tail_value)
SELECT * FROM bench_series_state(%(first_pk)s, %(last_pk)s, %(tail)s)
ON CONFLICT (key_id, run_pk) DO UPDATE SET
    n_finite = EXCLUDED.n_finite, tail_step = EXCLUDED.tail_step,
    tail_time = EXCLUDED.tail_time, tail_value = EXCLUDED.tail_value, updated_at = now();

-- name: reserve_history_batches
-- The history used batch ids 1 .. total (seq = (step + 1) << 20 | ordinal): the SDK's
-- flushes continue after them, so seq keeps following logging order.
SELECT setval('ingest_batch_seq', %(batches)s);

-- name: store_nonfinite_points
-- nonfinite_points as the SDK's flush leaves them: the NaN and infinite points of the runs
-- whose ids lie in [first_pk, last_pk] (once per point: the load adds history, not repeats).
INSERT INTO nonfinite_points (run_pk, key_id, seq, step, "time", value)
SELECT m.run_pk, m.key_id, m.seq, m.step, m.time, m.value
FROM metric_points m
WHERE m.run_pk BETWEEN %(first_pk)s AND %(last_pk)s AND NOT is_finite_value(m.value)
ON CONFLICT DO NOTHING;

-- name: nonfinite_from_points
SELECT m.run_pk, m.key_id, m.seq, m.step, m.time, m.value::text
FROM metric_points m
WHERE m.run_pk BETWEEN %(first_pk)s AND %(last_pk)s AND NOT is_finite_value(m.value)
ORDER BY 1, 2, 3;

-- name: nonfinite_stored
SELECT n.run_pk, n.key_id, n.seq, n.step, n.time, n.value::text
FROM nonfinite_points n
WHERE n.run_pk BETWEEN %(first_pk)s AND %(last_pk)s
ORDER BY 1, 2, 3;
