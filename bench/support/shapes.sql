-- Query shapes of bench/query_shapes.py (issue 3): "evaluate a threshold rule at the newest
-- value of every series". Shapes (1) and (2) are the compiled query itself (engine/compiler/metrics.py),
-- over a full tail and over an emptied one; (3) is written here.

-- name: window_functions
-- (3) Window functions over the hypertable: per pending series, number its finite values
-- newest first (ROW_NUMBER), keep the new ones plus the window-1 before them, and average
-- each window with avg() OVER. The scan reads every value of the pending series (through
-- the (run_pk, key_id, seq) index of every chunk); the window step sees only the kept ones.
WITH pending AS (
    SELECT b.run_pk, b.key_id, min(b.first_pos) AS first_pos, max(b.last_pos) AS last_pos
    FROM series_batches b
    JOIN metric_keys k ON k.id = b.key_id
    WHERE k.key = %(metric)s AND b.xid >= %(from_xid)s::xid8 AND b.xid < %(to_xid)s::xid8
    GROUP BY b.run_pk, b.key_id
), ranked AS (
    SELECT m.run_pk, m.step, m.time, m.value, p.last_pos - p.first_pos + 1 AS new_values,
           row_number() OVER (PARTITION BY m.run_pk ORDER BY m.seq DESC) AS rn
    FROM pending p
    JOIN metric_points m ON m.run_pk = p.run_pk AND m.key_id = p.key_id
    WHERE m.value < 'Infinity'::float8 AND m.value > '-Infinity'::float8
), win AS (
    SELECT r.run_pk, r.rn, r.step, r.time, r.value, r.new_values,
           avg(r.value) OVER w AS aggregate, count(*) OVER w AS n
    FROM ranked r
    WHERE r.rn < r.new_values + %(window)s
    WINDOW w AS (PARTITION BY r.run_pk ORDER BY r.rn DESC ROWS BETWEEN %(window_preceding)s PRECEDING AND CURRENT ROW)
)
SELECT w.run_pk, w.step, w.aggregate
FROM win w
WHERE w.rn <= w.new_values AND w.n = %(window)s AND w.aggregate > %(threshold)s
ORDER BY w.run_pk, w.step;

-- name: empty_tails
-- Keep only the newest value in each tail of the project's runs: every window of more than
-- one value must then be read from the hypertable (the compiled query's other branch).
UPDATE series_state
SET tail_step = tail_step[cardinality(tail_step):], tail_time = tail_time[cardinality(tail_time):],
    tail_value = tail_value[cardinality(tail_value):]
WHERE run_pk BETWEEN %(first_pk)s AND %(last_pk)s;
