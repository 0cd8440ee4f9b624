-- The hand-written baseline of bench/evaluate.py: every metric automation of the benchmark
-- evaluated in ONE statement over the same state as the evaluator (series_batches in
-- [from_xid, to_xid), series_state tails), with the same per-value semantics: at every new
-- finite value, the window of the N finite values ending at it (change rules: the current
-- window and the prior one before it). Rules come in as parallel arrays (one element per
-- automation); windows are array slices of the tails, each distinct window (metric,
-- aggregation, sizes) reduced once per value by a subquery, whatever the number of rules
-- that use it. It returns what each automation's compiled query would return, before the
-- cooldown.

-- name: baseline
WITH rules AS (
    SELECT *
    FROM unnest(%(automation_id)s::bigint[], %(key_id)s::integer[], %(agg)s::text[], %(op)s::text[],
                %(threshold)s::float8[], %(w)s::integer[], %(pw)s::integer[], %(relative)s::boolean[],
                %(direction)s::text[], %(amount)s::float8[])
        AS r(automation_id, key_id, agg, op, threshold, w, pw, relative, direction, amount)
), windows AS (
    -- rules that reduce the same windows the same way share the work
    SELECT DISTINCT key_id, agg, w, pw FROM rules
), pending AS (
    SELECT b.run_pk, b.key_id, min(b.first_pos) AS first_pos, max(b.last_pos) AS last_pos
    FROM series_batches b
    WHERE b.xid >= %(from_xid)s::xid8 AND b.xid < %(to_xid)s::xid8
    GROUP BY b.run_pk, b.key_id
), points AS (
    -- i: the index in the tail of the value at position pos
    SELECT p.run_pk, p.key_id, e.pos, e.pos - (s.n_finite - cardinality(s.tail_value)) AS i, s.tail_value
    FROM pending p
    JOIN series_state s ON s.key_id = p.key_id AND s.run_pk = p.run_pk
    JOIN runs r ON r.id = p.run_pk
    CROSS JOIN LATERAL generate_series(p.first_pos, p.last_pos) AS e(pos)
    WHERE r.project_id = (SELECT pr.id FROM projects pr WHERE pr.entity = %(entity)s AND pr.name = %(project)s)
), reduced AS MATERIALIZED (
    -- MATERIALIZED: each distinct window is reduced once per value, then shared by the rules
    -- that use it (inlined, the planner would join the rules first and reduce per rule).
    -- One subquery runs per window: the CASE picks it (a CASE over avg/min/max inside one
    -- subquery would run all three aggregates on every value); unnest in a select list
    -- streams the values, in FROM it would copy them into a tuplestore first. Only scalars
    -- are kept (the tails are read again for the few values that fire).
    SELECT wi.key_id, wi.agg, wi.w, wi.pw, pt.run_pk, pt.pos, pt.i,
           CASE wi.agg
               WHEN 'avg' THEN (SELECT avg(v) FROM (SELECT unnest(pt.tail_value[pt.i - wi.w + 1:pt.i]) AS v) AS u)
               WHEN 'min' THEN (SELECT min(v) FROM (SELECT unnest(pt.tail_value[pt.i - wi.w + 1:pt.i]) AS v) AS u)
               ELSE (SELECT max(v) FROM (SELECT unnest(pt.tail_value[pt.i - wi.w + 1:pt.i]) AS v) AS u)
           END AS cur,
           CASE WHEN wi.pw = 0 THEN NULL
               WHEN wi.agg = 'avg' THEN (SELECT avg(v) FROM (SELECT unnest(pt.tail_value[pt.i - wi.w - wi.pw + 1:pt.i - wi.w]) AS v) AS u)
               WHEN wi.agg = 'min' THEN (SELECT min(v) FROM (SELECT unnest(pt.tail_value[pt.i - wi.w - wi.pw + 1:pt.i - wi.w]) AS v) AS u)
               ELSE (SELECT max(v) FROM (SELECT unnest(pt.tail_value[pt.i - wi.w - wi.pw + 1:pt.i - wi.w]) AS v) AS u)
           END AS prior
    FROM points pt
    JOIN windows wi ON wi.key_id = pt.key_id
    WHERE pt.pos >= wi.w + wi.pw              -- the windows are full
      AND pt.i - wi.w - wi.pw + 1 >= 1        -- and in the tail (the benchmark checks none is cut)
), scored AS (
    SELECT ru.automation_id, ru.op, ru.threshold, ru.direction, ru.amount, x.*,
           CASE WHEN x.pw = 0 THEN x.cur
                WHEN ru.relative THEN (x.cur - x.prior) / nullif(abs(x.prior), 0)
                ELSE x.cur - x.prior END AS d
    FROM reduced x
    JOIN rules ru ON ru.key_id = x.key_id AND ru.agg = x.agg AND ru.w = x.w AND ru.pw = x.pw
), fired AS (
    SELECT sc.*
    FROM scored sc
    WHERE CASE WHEN sc.pw = 0 THEN
              CASE sc.op WHEN '>' THEN sc.d > sc.threshold WHEN '>=' THEN sc.d >= sc.threshold
                         WHEN '<' THEN sc.d < sc.threshold WHEN '<=' THEN sc.d <= sc.threshold
                         WHEN '==' THEN sc.d = sc.threshold ELSE sc.d <> sc.threshold END
          ELSE
              CASE sc.direction WHEN 'increase' THEN sc.d >= sc.amount WHEN 'decrease' THEN -sc.d >= sc.amount
                                ELSE abs(sc.d) >= sc.amount END
          END
)
SELECT f.automation_id, f.run_pk, f.key_id, f.pos, s.tail_step[f.i] AS step, s.tail_time[f.i] AS time,
       s.tail_value[f.i] AS value, f.d AS aggregate, s.tail_value[f.i - f.w + 1:f.i] AS window_values,
       f.prior AS prior_aggregate, s.tail_value[f.i - f.w - f.pw + 1:f.i - f.w] AS prior_values
FROM fired f
JOIN series_state s ON s.key_id = f.key_id AND s.run_pk = f.run_pk
ORDER BY f.automation_id, f.run_pk, f.pos;

-- name: cut_windows
-- Evaluations whose windows would reach before the tail (the baseline skips them; the
-- benchmark's tails are long enough for every window, which this checks).
WITH rules AS (
    SELECT * FROM unnest(%(key_id)s::integer[], %(span)s::integer[]) AS r(key_id, span)
), pending AS (
    SELECT b.run_pk, b.key_id, min(b.first_pos) AS first_pos, max(b.last_pos) AS last_pos
    FROM series_batches b
    WHERE b.xid >= %(from_xid)s::xid8 AND b.xid < %(to_xid)s::xid8
    GROUP BY b.run_pk, b.key_id
)
SELECT count(*)
FROM pending p
JOIN series_state s ON s.key_id = p.key_id AND s.run_pk = p.run_pk
JOIN rules ru ON ru.key_id = p.key_id
CROSS JOIN LATERAL generate_series(p.first_pos, p.last_pos) AS e(pos)
WHERE e.pos >= ru.span AND e.pos - (s.n_finite - cardinality(s.tail_value)) - ru.span + 1 < 1;

-- name: pending_series
-- Per metric key: the series with a new value in [from_xid, to_xid) (rule-series evaluations).
SELECT b.key_id, count(DISTINCT b.run_pk)
FROM series_batches b
WHERE b.xid >= %(from_xid)s::xid8 AND b.xid < %(to_xid)s::xid8
GROUP BY b.key_id;

-- name: span
-- The xid range a tick would evaluate now: the automations' lowest frontier to the xmin.
SELECT min(s.frontier)::text, pg_snapshot_xmin(pg_current_snapshot())::text
FROM automation_state s;
