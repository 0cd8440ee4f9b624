-- Written by the SDK's flush, all in one transaction with the COPY of the points.

-- name: ingest_flush
-- The bookkeeping of a flush after its COPY, in one statement (the function ingest_flush of
-- engine/sql/migrations, whose statements keep their plans): series_state and its series_batches rows, the runs'
-- steps and last ingestion, the NOTIFY; returns the runs' pending stop requests. Series and
-- runs as parallel arrays (see the function); NULL series arrays: no finite value.
SELECT run_pk, automation
FROM ingest_flush(%(key_ids)s::integer[], %(run_pks)s::bigint[], %(n_new)s::bigint[], %(lens)s::integer[],
                  %(steps)s::bigint[], %(times)s::timestamptz[], %(values)s::double precision[],
                  %(tail)s::integer, %(seq_bound)s::bigint,
                  %(runs)s::bigint[], %(run_steps)s::bigint[], %(run_system_steps)s::bigint[]);

-- name: insert_nonfinite
-- The flush's non-finite values (NaN, ±Infinity), rare, as parallel arrays: kept apart from
-- the series' tails for the rules on them (migration 0013).
INSERT INTO nonfinite_points (run_pk, key_id, seq, step, "time", value)
SELECT * FROM unnest(%(run_pks)s::bigint[], %(key_ids)s::integer[], %(seqs)s::bigint[], %(steps)s::bigint[],
                     %(times)s::timestamptz[], %(values)s::double precision[]);
