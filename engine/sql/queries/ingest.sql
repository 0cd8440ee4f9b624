-- Written by the SDK's flush, all in one transaction with the COPY of the points.

-- name: upsert_series
-- One touched series of a flush: append its new finite values to the tail (keeping the last
-- %(tail)s), count them, and stamp a series_batches row (the evaluators' watermark) with
-- the positions of the new values. %(steps)s/%(times)s/%(values)s are the *last* tail-many
-- new finite values; %(n_new)s is how many finite values the flush had for this series;
-- %(seq_bound)s the highest seq the flush wrote (migration 0006).
WITH up AS (
    INSERT INTO series_state AS s (key_id, run_pk, n_finite, tail_step, tail_time, tail_value)
    VALUES (%(key_id)s, %(run_pk)s, %(n_new)s, %(steps)s, %(times)s, %(values)s)
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
SELECT key_id, run_pk, n_finite - %(n_new)s + 1, n_finite, %(seq_bound)s FROM up;

-- name: notify_ingest
-- One NOTIFY per flushed batch (NOTIFY takes a global lock at commit: never one per point).
SELECT pg_notify('engine_ingest', %(payload)s);
