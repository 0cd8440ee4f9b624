-- Which values count, and their positions. A series' values are numbered 1..n in logging
-- order (seq) among its finite values only; a metric trigger's exactly-once key
-- ('metric:<run>:<key>:<position>') is built from that number, and its windows are the
-- finite values before it. Ingest counts them (series_state.n_finite, series_batches'
-- positions), evaluation reads them back by position, `engine explain` numbers them again:
-- all three must agree, so both the test and the numbering live here.

-- A finite value: not NaN, not an infinity (NaN compares above 'Infinity' in PostgreSQL, so
-- the two comparisons leave it out too). A plain expression, which the planner inlines: no
-- function call per row. (The SDK's flush counts finite values before they reach the
-- database; tests/integration/test_schema.py holds its test to this one.)
CREATE FUNCTION is_finite_value(value double precision) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN value < 'Infinity'::double precision AND value > '-Infinity'::double precision;

-- The finite values of one series with their positions (`pos`), oldest first: the value at
-- position n is the one a trigger with cause 'metric:<run>:<key>:<n>' fired at. `system`
-- picks the table (system_metrics holds the `system/<key>` metrics); only that branch reads
-- rows.
CREATE FUNCTION finite_series(of_run bigint, of_key integer, system boolean)
    RETURNS TABLE (pos bigint, seq bigint, step bigint, "time" timestamptz, value double precision)
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT row_number() OVER (ORDER BY s.seq), s.seq, s.step, s.time, s.value
    FROM (
        SELECT m.seq, m.step, m.time, m.value FROM metric_points m
        WHERE NOT finite_series.system AND m.run_pk = finite_series.of_run AND m.key_id = finite_series.of_key
          AND is_finite_value(m.value)
        UNION ALL
        SELECT m.seq, m.step, m.time, m.value FROM system_metrics m
        WHERE finite_series.system AND m.run_pk = finite_series.of_run AND m.key_id = finite_series.of_key
          AND is_finite_value(m.value)
    ) s
    ORDER BY s.seq;
END;
