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

-- name: ingest_flush
-- The runs' bookkeeping of a flush, after upsert_series, in one statement (the function
-- ingest_flush of engine/sql/migrations, whose statements keep their plans): each run's
-- current steps and last ingestion, the NOTIFY; returns the runs' pending stop requests.
SELECT run_pk, automation
FROM ingest_flush(%(runs)s::bigint[], %(run_steps)s::bigint[], %(run_system_steps)s::bigint[]);

-- name: insert_nonfinite
-- The flush's non-finite values (NaN, ±Infinity), rare, as parallel arrays: kept apart from
-- the series' tails for the rules on them (migration 0013).
INSERT INTO nonfinite_points (run_pk, key_id, seq, step, "time", value)
SELECT * FROM unnest(%(run_pks)s::bigint[], %(key_ids)s::integer[], %(seqs)s::bigint[], %(steps)s::bigint[],
                     %(times)s::timestamptz[], %(values)s::double precision[]);
