-- The hand-written baseline of bench/evaluate.py: the benchmark's metric automations
-- evaluated over the same state as the evaluator (series_batches in [from_xid, to_xid),
-- series_state tails), with the same per-value semantics: at every new finite value, the
-- window of the N finite values ending at it (change rules: the current window and the
-- prior one before it). It is the best SQL I know for it, stripped of what the product
-- needs and the benchmark does not (scopes and run filters per rule, tails too short, the
-- hypertable, locks, trigger rows):
-- * one statement per metric (the benchmark sums them), its rules passed as rows;
-- * every distinct segment of the metric's windows (aggregation, stretch back from the
--   value) reduced in ONE pass over the last span_max values of each new value, one
--   FILTERed aggregate per segment ({aggregates} is that list, composed by the benchmark
--   with psycopg.sql: one `agg(u.v) FILTER (WHERE u.back BETWEEN lo AND hi)` per segment);
--   a subquery per window and value (the previous baseline) was ~3x slower;
-- * the rules matched per value by a subquery kept apart (OFFSET 0), so that the planner
--   cannot join the rules first and reduce the windows once per rule.
-- Z-score rules are two more segments of the same pass, over the `window` values before
-- the value (back 1..window): avg and stddev_pop; z = (value - avg) / stddev_pop, no z when
-- it is 0 (ops z+, z-, z|: z > bound, -z > bound, |z| > bound).
-- It returns what the evaluator's queries return, before the cooldown.

-- name: baseline
WITH rules AS MATERIALIZED (
    SELECT *
    FROM unnest(%(automation_id)s::bigint[], %(op)s::text[], %(bound)s::float8[], %(relative)s::boolean[], %(w)s::integer[], %(span)s::integer[], %(cur)s::integer[],
                %(prior)s::integer[], %(z)s::boolean[])
        AS r(automation_id, op, bound, relative, w, span, cur, prior, z)
), pending AS (
    SELECT b.run_pk, min(b.first_pos) AS first_pos, max(b.last_pos) AS last_pos
    FROM series_batches b
    WHERE b.key_id = %(key_id)s AND b.xid >= %(from_xid)s::xid8 AND b.xid < %(to_xid)s::xid8
    GROUP BY b.run_pk
), points AS (
    -- i: the index in the tail of the value at position pos
    SELECT p.run_pk, e.pos, e.pos - (s.n_finite - cardinality(s.tail_value)) AS i, s.tail_step, s.tail_time,
           s.tail_value
    FROM pending p
    JOIN series_state s ON s.key_id = %(key_id)s AND s.run_pk = p.run_pk
    JOIN runs r ON r.id = p.run_pk
    CROSS JOIN LATERAL generate_series(greatest(p.first_pos, %(span_min)s), p.last_pos) AS e(pos)
    WHERE r.project_id = (SELECT pr.id FROM projects pr WHERE pr.entity = %(entity)s AND pr.name = %(project)s)
)
SELECT ru.automation_id, pt.run_pk, %(key_id)s::integer AS key_id, pt.pos, pt.tail_step[pt.i] AS step,
       pt.tail_time[pt.i] AS time, pt.tail_value[pt.i] AS value, ru.d AS aggregate,
       pt.tail_value[pt.i - ru.w + 1:pt.i] AS window_values, ag.a[ru.prior] AS prior_aggregate,
       CASE WHEN ru.prior IS NOT NULL THEN pt.tail_value[pt.i - ru.span + 1:pt.i - ru.w] END AS prior_values
FROM points pt
CROSS JOIN LATERAL (
    SELECT ARRAY[{aggregates}] AS a
    FROM (SELECT unnest(pt.tail_value[pt.i - %(span_max)s + 1:pt.i]) AS v,
                 generate_series(least(pt.i, %(span_max)s) - 1, 0, -1) AS back) AS u
) AS ag
CROSS JOIN LATERAL (
    SELECT ru.*, CASE WHEN ru.z THEN (pt.tail_value[pt.i] - ag.a[ru.cur]) / nullif(ag.a[ru.prior], 0)
                      WHEN ru.prior IS NULL THEN ag.a[ru.cur]
                      WHEN ru.relative THEN (ag.a[ru.cur] - ag.a[ru.prior]) / nullif(abs(ag.a[ru.prior]), 0)
                      ELSE ag.a[ru.cur] - ag.a[ru.prior] END AS d
    FROM rules ru
    WHERE pt.pos >= ru.span
    OFFSET 0
) AS ru
WHERE CASE ru.op
          WHEN '>' THEN ru.d > ru.bound WHEN '>=' THEN ru.d >= ru.bound
          WHEN '<' THEN ru.d < ru.bound WHEN '<=' THEN ru.d <= ru.bound
          WHEN '==' THEN ru.d = ru.bound WHEN '!=' THEN ru.d <> ru.bound
          WHEN 'increase' THEN ru.d >= ru.bound WHEN 'decrease' THEN -ru.d >= ru.bound
          WHEN 'z+' THEN ru.d > ru.bound WHEN 'z-' THEN -ru.d > ru.bound WHEN 'z|' THEN abs(ru.d) > ru.bound
          ELSE abs(ru.d) >= ru.bound
      END
ORDER BY ru.automation_id, pt.run_pk, pt.pos;

-- name: baseline_classes
-- The same evaluation, the rules matched by class instead of one by one: a class is the
-- value some rules compare with their bounds (an aggregate, a change; negated for rules
-- firing below their bound, absolute for `any`), its rules sorted by bound, so that the
-- rules that can fire at a value are a prefix of the class, found by a binary search
-- (width_bucket). {can_fire} (one `test >= lowest bound` per class, OR-ed) and {prefixes}
-- (one `rules[1:width_bucket(test, bounds)]` per class, concatenated) are composed by the
-- benchmark with psycopg.sql; only the candidates are matched exactly. The per-rule
-- baseline above checks every rule at every value: ~2x slower with 200 rules per metric.
WITH pending AS (
    SELECT b.run_pk, min(b.first_pos) AS first_pos, max(b.last_pos) AS last_pos
    FROM series_batches b
    WHERE b.key_id = %(key_id)s AND b.xid >= %(from_xid)s::xid8 AND b.xid < %(to_xid)s::xid8
    GROUP BY b.run_pk
), points AS (
    SELECT p.run_pk, e.pos, e.pos - (s.n_finite - cardinality(s.tail_value)) AS i, s.tail_step, s.tail_time,
           s.tail_value
    FROM pending p
    JOIN series_state s ON s.key_id = %(key_id)s AND s.run_pk = p.run_pk
    JOIN runs r ON r.id = p.run_pk
    CROSS JOIN LATERAL generate_series(greatest(p.first_pos, %(span_min)s), p.last_pos) AS e(pos)
    WHERE r.project_id = (SELECT pr.id FROM projects pr WHERE pr.entity = %(entity)s AND pr.name = %(project)s)
), candidates AS (
    SELECT pt.*, ag.a, CASE WHEN {can_fire} THEN {prefixes} END AS rules
    FROM points pt
    CROSS JOIN LATERAL (
        SELECT ARRAY[{aggregates}] AS a
        FROM (SELECT unnest(pt.tail_value[pt.i - %(span_max)s + 1:pt.i]) AS v,
                     generate_series(least(pt.i, %(span_max)s) - 1, 0, -1) AS back) AS u
    ) AS ag
    OFFSET 0
)
SELECT ru.automation_id, c.run_pk, %(key_id)s::integer AS key_id, c.pos, c.tail_step[c.i] AS step,
       c.tail_time[c.i] AS time, c.tail_value[c.i] AS value, ru.d AS aggregate,
       c.tail_value[c.i - ru.w + 1:c.i] AS window_values, c.a[ru.prior] AS prior_aggregate,
       CASE WHEN ru.prior IS NOT NULL THEN c.tail_value[c.i - ru.span + 1:c.i - ru.w] END AS prior_values
FROM candidates c
CROSS JOIN LATERAL unnest(c.rules) AS k(n)
CROSS JOIN LATERAL (
    SELECT x.*, CASE WHEN x.z THEN (c.tail_value[c.i] - c.a[x.cur]) / nullif(c.a[x.prior], 0)
                     WHEN x.prior IS NULL THEN c.a[x.cur]
                     WHEN x.relative THEN (c.a[x.cur] - c.a[x.prior]) / nullif(abs(c.a[x.prior]), 0)
                     ELSE c.a[x.cur] - c.a[x.prior] END AS d
    FROM (SELECT (%(automation_id)s::bigint[])[k.n] AS automation_id, (%(op)s::text[])[k.n] AS op,
                 (%(bound)s::float8[])[k.n] AS bound, (%(relative)s::boolean[])[k.n] AS relative,
                 (%(w)s::integer[])[k.n] AS w, (%(span)s::integer[])[k.n] AS span,
                 (%(cur)s::integer[])[k.n] AS cur, (%(prior)s::integer[])[k.n] AS prior,
                 (%(z)s::boolean[])[k.n] AS z) AS x
    OFFSET 0
) AS ru
WHERE c.pos >= ru.span
  AND CASE ru.op
          WHEN '>' THEN ru.d > ru.bound WHEN '>=' THEN ru.d >= ru.bound
          WHEN '<' THEN ru.d < ru.bound WHEN '<=' THEN ru.d <= ru.bound
          WHEN '==' THEN ru.d = ru.bound WHEN '!=' THEN ru.d <> ru.bound
          WHEN 'increase' THEN ru.d >= ru.bound WHEN 'decrease' THEN -ru.d >= ru.bound
          WHEN 'z+' THEN ru.d > ru.bound WHEN 'z-' THEN -ru.d > ru.bound WHEN 'z|' THEN abs(ru.d) > ru.bound
          ELSE abs(ru.d) >= ru.bound
      END
ORDER BY ru.automation_id, c.run_pk, c.pos;

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

-- name: baseline_nonfinite
-- Non-finite rules, all in one statement: the NaN and infinite values written in
-- [from_xid, to_xid) (nonfinite_points, filled by the SDK's flush in the transaction of the
-- points), matched with the rules on their metric and the values they watch.
WITH rules AS MATERIALIZED (
    SELECT *
    FROM unnest(%(automation_id)s::bigint[], %(key_id)s::integer[], %(nan)s::boolean[], %(pinf)s::boolean[],
                %(ninf)s::boolean[])
        AS r(automation_id, key_id, nan, pinf, ninf)
)
SELECT ru.automation_id, n.run_pk, n.key_id, n.seq
FROM nonfinite_points n
JOIN rules ru ON ru.key_id = n.key_id
JOIN runs r ON r.id = n.run_pk
WHERE n.xid >= %(from_xid)s::xid8 AND n.xid < %(to_xid)s::xid8
  AND r.project_id = (SELECT pr.id FROM projects pr WHERE pr.entity = %(entity)s AND pr.name = %(project)s)
  AND CASE WHEN n.value = 'NaN'::float8 THEN ru.nan WHEN n.value > 0 THEN ru.pinf ELSE ru.ninf END
ORDER BY ru.automation_id, n.run_pk, n.seq;
