-- The hand-written baseline of bench/evaluate.py: every metric automation of the benchmark
-- evaluated in ONE statement over the same state as the evaluator (series_batches in
-- [from_xid, to_xid), series_state tails), with the same per-value semantics: at every new
-- finite value, the window of the N finite values ending at it (change rules: the current
-- window and the prior one before it). Rules come in as parallel arrays (one element per
-- automation); windows are array slices of the tails, reduced by a subquery per
-- (rule, value). It returns what each automation's compiled query would return, before
-- the cooldown.

-- name: baseline
WITH rules AS (
    SELECT *
    FROM unnest(%(automation_id)s::bigint[], %(key_id)s::integer[], %(agg)s::text[], %(op)s::text[],
                %(threshold)s::float8[], %(w)s::integer[], %(pw)s::integer[], %(relative)s::boolean[],
                %(direction)s::text[], %(amount)s::float8[])
        AS r(automation_id, key_id, agg, op, threshold, w, pw, relative, direction, amount)
), pending AS (
    SELECT b.run_pk, b.key_id, min(b.first_pos) AS first_pos, max(b.last_pos) AS last_pos
    FROM series_batches b
    WHERE b.xid >= %(from_xid)s::xid8 AND b.xid < %(to_xid)s::xid8
    GROUP BY b.run_pk, b.key_id
), points AS (
    -- i: the index in the tail of the value at position pos
    SELECT p.run_pk, p.key_id, e.pos, e.pos - (s.n_finite - cardinality(s.tail_value)) AS i,
           s.tail_step, s.tail_time, s.tail_value
    FROM pending p
    JOIN series_state s ON s.key_id = p.key_id AND s.run_pk = p.run_pk
    JOIN runs r ON r.id = p.run_pk
    JOIN projects pr ON pr.id = r.project_id
    CROSS JOIN LATERAL generate_series(p.first_pos, p.last_pos) AS e(pos)
    WHERE pr.entity = %(entity)s AND pr.name = %(project)s
), evals AS (
    SELECT ru.automation_id, ru.w, ru.pw, ru.op, ru.threshold, ru.relative, ru.direction, ru.amount,
           pt.run_pk, pt.key_id, pt.pos, pt.i, pt.tail_step, pt.tail_time, pt.tail_value,
           (SELECT CASE ru.agg WHEN 'avg' THEN avg(v) WHEN 'min' THEN min(v) ELSE max(v) END
            FROM unnest(pt.tail_value[pt.i - ru.w + 1:pt.i]) AS v) AS cur,
           CASE WHEN ru.pw > 0 THEN
               (SELECT CASE ru.agg WHEN 'avg' THEN avg(v) WHEN 'min' THEN min(v) ELSE max(v) END
                FROM unnest(pt.tail_value[pt.i - ru.w - ru.pw + 1:pt.i - ru.w]) AS v)
           END AS prior
    FROM points pt
    JOIN rules ru ON ru.key_id = pt.key_id
    WHERE pt.pos >= ru.w + ru.pw              -- the windows are full
      AND pt.i - ru.w - ru.pw + 1 >= 1        -- and in the tail (the benchmark checks none is cut)
), scored AS (
    SELECT e.*,
           CASE WHEN e.pw = 0 THEN e.cur
                WHEN e.relative THEN (e.cur - e.prior) / nullif(abs(e.prior), 0)
                ELSE e.cur - e.prior END AS d
    FROM evals e
)
SELECT s.automation_id, s.run_pk, s.key_id, s.pos, s.tail_step[s.i] AS step, s.tail_time[s.i] AS time,
       s.tail_value[s.i] AS value, s.d AS aggregate, s.tail_value[s.i - s.w + 1:s.i] AS window_values,
       s.prior AS prior_aggregate, s.tail_value[s.i - s.w - s.pw + 1:s.i - s.w] AS prior_values
FROM scored s
WHERE CASE WHEN s.pw = 0 THEN
          CASE s.op WHEN '>' THEN s.d > s.threshold WHEN '>=' THEN s.d >= s.threshold
                    WHEN '<' THEN s.d < s.threshold WHEN '<=' THEN s.d <= s.threshold
                    WHEN '==' THEN s.d = s.threshold ELSE s.d <> s.threshold END
      ELSE
          CASE s.direction WHEN 'increase' THEN s.d >= s.amount WHEN 'decrease' THEN -s.d >= s.amount
                           ELSE abs(s.d) >= s.amount END
      END
ORDER BY s.automation_id, s.run_pk, s.pos;

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
