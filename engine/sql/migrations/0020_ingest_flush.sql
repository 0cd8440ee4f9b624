-- The bookkeeping of every SDK flush after its COPY, in one function: the series' tails and
-- counts (series_state) with their watermark rows (series_batches), each run's current steps
-- and last ingestion (runs, run_metric_gaps), the NOTIFY, and the runs' pending stop requests.
-- As four statements sent by the client, each was parsed and planned again by every flush
-- (the SDK uses no prepared statements, so that it works through PgBouncer in transaction
-- mode): planning cost more than running them. PL/pgSQL keeps each statement's plan for the
-- life of the server connection, which no pooler can break, and one call is one statement
-- for the client. Generic plans (planned once, for any number of series and runs): what a
-- flush's statements do is the same for any of its sizes, a join on primary keys.
--
-- Series i is (p_key_ids[i], p_run_pks[i]) with p_n_new[i] finite values in the flush, of
-- which the *last* tail-many are the next p_lens[i] elements of p_steps/p_times/p_values (the
-- tails laid end to end); p_seq_bound is the highest seq the flush wrote. Run j of the flush
-- (p_runs[j]) has p_run_steps[j] and p_run_system_steps[j] as the highest metric step and
-- system sample of the flush (-1: none; a run with no metric value is not alive for stalls).
-- Returns the pending stop requests (stop_run) of the flush's runs, oldest first.
CREATE FUNCTION ingest_flush(
    p_key_ids integer[], p_run_pks bigint[], p_n_new bigint[], p_lens integer[],
    p_steps bigint[], p_times timestamptz[], p_values double precision[], p_tail integer, p_seq_bound bigint,
    p_runs bigint[], p_run_steps bigint[], p_run_system_steps bigint[]
) RETURNS TABLE (run_pk bigint, automation text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    IF cardinality(p_key_ids) > 0 THEN
        -- append each series' new finite values to its tail (keeping the last p_tail), count
        -- them, and stamp a series_batches row (the evaluators' watermark, xid-stamped) with
        -- the positions of the new values
        WITH series AS (
            SELECT key_id, run_pk, n_new,
                   sum(len) OVER (ORDER BY i) - len + 1 AS first,
                   sum(len) OVER (ORDER BY i) AS last
            FROM unnest(p_key_ids, p_run_pks, p_n_new, p_lens) WITH ORDINALITY AS s(key_id, run_pk, n_new, len, i)
        ), up AS (
            INSERT INTO series_state AS s (key_id, run_pk, n_finite, tail_step, tail_time, tail_value)
            SELECT key_id, run_pk, n_new, p_steps[first:last], p_times[first:last], p_values[first:last]
            FROM series
            ON CONFLICT (key_id, run_pk) DO UPDATE SET
                n_finite   = s.n_finite + EXCLUDED.n_finite,
                tail_step  = (s.tail_step || EXCLUDED.tail_step)
                             [greatest(1, cardinality(s.tail_step) + cardinality(EXCLUDED.tail_step) - p_tail + 1):],
                tail_time  = (s.tail_time || EXCLUDED.tail_time)
                             [greatest(1, cardinality(s.tail_time) + cardinality(EXCLUDED.tail_time) - p_tail + 1):],
                tail_value = (s.tail_value || EXCLUDED.tail_value)
                             [greatest(1, cardinality(s.tail_value) + cardinality(EXCLUDED.tail_value) - p_tail + 1):],
                updated_at = now()
            RETURNING key_id, run_pk, n_finite
        )
        INSERT INTO series_batches (key_id, run_pk, first_pos, last_pos, seq_bound)
        SELECT up.key_id, up.run_pk, up.n_finite - series.n_new + 1, up.n_finite, p_seq_bound
        FROM up JOIN series USING (key_id, run_pk);
    END IF;

    -- each run keeps its current steps; a run with metric values had its last one now, on the
    -- database's clock, and a pause of at least a minute since the one before (or since the
    -- run's start) is recorded in run_metric_gaps, for stall rules' backtests
    WITH flushed AS (
        SELECT * FROM unnest(p_runs, p_run_steps, p_run_system_steps) AS f(id, step, system_step)
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

    -- one NOTIFY per flush (NOTIFY takes a global lock at commit: never one per point)
    PERFORM pg_notify('engine_ingest', '');

    RETURN QUERY
    SELECT s.run_pk, s.automation FROM stop_requests AS s
    WHERE s.run_pk = ANY(p_runs) AND s.ended_at IS NULL
    ORDER BY s.trigger_id;
END
$$;
