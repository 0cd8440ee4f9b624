-- Written by the SDK's flush, all in one transaction with the COPY of the points.

-- name: upsert_series
-- The series a flush touched, in one statement: append each one's new finite values to its
-- tail (keeping the last %(tail)s), count them, and stamp a series_batches row (the
-- evaluators' watermark) with the positions of the new values. Series i is
-- (%(key_ids)s[i], %(run_pks)s[i]) with %(n_new)s[i] finite values in the flush, of which the
-- *last* tail-many are the next %(lens)s[i] elements of %(steps)s/%(times)s/%(values)s (the
-- tails laid end to end); %(seq_bound)s is the highest seq the flush wrote (migration 0006).
WITH series AS (
    SELECT key_id, run_pk, n_new,
           sum(len) OVER (ORDER BY i) - len + 1 AS first,
           sum(len) OVER (ORDER BY i) AS last
    FROM unnest(%(key_ids)s::integer[], %(run_pks)s::bigint[], %(n_new)s::bigint[], %(lens)s::integer[])
         WITH ORDINALITY AS s(key_id, run_pk, n_new, len, i)
), up AS (
    INSERT INTO series_state AS s (key_id, run_pk, n_finite, tail_step, tail_time, tail_value)
    SELECT key_id, run_pk, n_new, (%(steps)s::bigint[])[first:last], (%(times)s::timestamptz[])[first:last],
           (%(values)s::double precision[])[first:last]
    FROM series
    ON CONFLICT (key_id, run_pk) DO UPDATE SET
        n_finite   = s.n_finite + EXCLUDED.n_finite,
        tail_step  = (s.tail_step || EXCLUDED.tail_step)
                     [greatest(1, cardinality(s.tail_step) + cardinality(EXCLUDED.tail_step) - %(tail)s + 1):],
        tail_time  = (s.tail_time || EXCLUDED.tail_time)
                     [greatest(1, cardinality(s.tail_time) + cardinality(EXCLUDED.tail_time) - %(tail)s + 1):],
        tail_value = (s.tail_value || EXCLUDED.tail_value)
                     [greatest(1, cardinality(s.tail_value) + cardinality(EXCLUDED.tail_value) - %(tail)s + 1):],
        updated_at = now()
    RETURNING key_id, run_pk, n_finite
)
INSERT INTO series_batches (key_id, run_pk, first_pos, last_pos, seq_bound)
SELECT up.key_id, up.run_pk, up.n_finite - series.n_new + 1, up.n_finite, %(seq_bound)s
FROM up JOIN series USING (key_id, run_pk);

-- name: notify_ingest
-- One NOTIFY per flushed batch (NOTIFY takes a global lock at commit: never one per point).
SELECT pg_notify('engine_ingest', %(payload)s);

-- name: insert_nonfinite
-- The flush's non-finite values (NaN, ±Infinity), rare, as parallel arrays: kept apart from
-- the series' tails for the rules on them (migration 0013).
INSERT INTO nonfinite_points (run_pk, key_id, seq, step, "time", value)
SELECT * FROM unnest(%(run_pks)s::bigint[], %(key_ids)s::integer[], %(seqs)s::bigint[], %(steps)s::bigint[],
                     %(times)s::timestamptz[], %(values)s::double precision[]);

-- name: note_run_ingest
-- The runs of a flush, each with the highest step of its metric values and of its system
-- samples in the flush (-1: none): the run keeps its current steps. A run with metric values
-- (system metrics do not count) had its last metric value now, on the database's clock; a
-- pause of at least a minute since the one before (or since the run's start) is recorded in
-- run_metric_gaps, for stall rules' backtests.
WITH flushed AS (
    SELECT * FROM unnest(%(run_pks)s::bigint[], %(steps)s::bigint[], %(system_steps)s::bigint[])
        AS f(id, step, system_step)
), before AS (
    SELECT r.id, coalesce(r.last_metric_at, r.created_at) AS since, f.step, f.system_step
    FROM runs AS r JOIN flushed AS f USING (id)
), stamped AS (
    UPDATE runs AS r
    SET step = greatest(r.step, b.step),
        system_step = greatest(r.system_step, b.system_step),
        last_metric_at = CASE WHEN b.step >= 0 THEN now() ELSE r.last_metric_at END
    FROM before AS b WHERE r.id = b.id
    RETURNING r.id, b.since, b.step >= 0 AS metric
)
INSERT INTO run_metric_gaps (run_pk, from_at, to_at)
SELECT id, since, now() FROM stamped WHERE metric AND since <= now() - interval '1 minute'
ON CONFLICT DO NOTHING;
