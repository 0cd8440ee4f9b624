WITH rules AS MATERIALIZED (
  SELECT
    r.*,
    pr.id AS project_id
  FROM UNNEST(CAST(%(rule)s AS INT[]), CAST(%(entity)s AS TEXT[]), CAST(%(project)s AS TEXT[]), CAST(%(run_user)s AS TEXT[]), CAST(%(run_name_regex)s AS TEXT[]), CAST(%(span)s AS INT[]), CAST(%(size)s AS INT[]), CAST(%(current_segment)s AS INT[]), CAST(%(prior_segment)s AS INT[]), CAST(%(relative)s AS BOOLEAN[]), CAST(%(direction)s AS TEXT[]), CAST(%(operator)s AS TEXT[]), CAST(%(bound)s AS DOUBLE PRECISION[])) AS r(rule, entity, project, run_user, run_name_regex, span, size, current_segment, prior_segment, relative, direction, operator, bound)
  JOIN projects AS pr
    ON pr.entity = r.entity AND pr.name = r.project
), pending AS (
  SELECT
    s.run_pk,
    s.key_id,
    1 AS first_pos,
    s.n_finite AS last_pos,
    CAST(NULL AS BIGINT) AS seq_bound
  FROM series_state AS s
  JOIN metric_keys AS k
    ON k.id = s.key_id
  WHERE
    k.key = %(metric)s
), series AS (
  SELECT
    p.run_pk,
    p.key_id,
    p.first_pos,
    p.last_pos,
    p.seq_bound,
    s.n_finite,
    s.n_finite - CARDINALITY(s.tail_value) AS base,
    GREATEST(1, p.first_pos - %(span_max)s + 1) AS need_from,
    s.tail_step,
    s.tail_time,
    s.tail_value,
    r.project_id,
    r.user_name,
    r.name AS run_name
  FROM pending AS p
  JOIN series_state AS s
    ON s.key_id = p.key_id AND s.run_pk = p.run_pk
  JOIN runs AS r
    ON r.id = p.run_pk
  WHERE
    r.project_id IN (
      SELECT
        ru.project_id
      FROM rules AS ru
    )
), vals AS (
  SELECT
    x.run_pk,
    x.key_id,
    x.first_pos,
    x.last_pos,
    x.project_id,
    x.user_name,
    x.run_name,
    CASE WHEN x.need_from > x.base THEN x.base ELSE x.need_from - 1 END AS off,
    CASE WHEN x.need_from > x.base THEN x.tail_step ELSE h.steps END AS steps,
    CASE WHEN x.need_from > x.base THEN x.tail_time ELSE h.times END AS times,
    CASE WHEN x.need_from > x.base THEN x.tail_value ELSE h.vals END AS vals
  FROM series AS x
  LEFT JOIN LATERAL (
    SELECT
      ARRAY_AGG(o.step) AS steps,
      ARRAY_AGG(o.time) AS times,
      ARRAY_AGG(o.value) AS vals
    FROM (
      SELECT
        n.step,
        n.time,
        n.value
      FROM (
        SELECT
          m.seq,
          m.step,
          m.time,
          m.value
        FROM metric_points AS m
        WHERE
          (
            (
              m.run_pk = x.run_pk AND m.key_id = x.key_id
            )
            AND m.seq <= COALESCE(x.seq_bound, 9223372036854775807)
          )
          AND (
            m.value < CAST('Infinity' AS DOUBLE PRECISION)
            AND m.value > CAST('-Infinity' AS DOUBLE PRECISION)
          )
        ORDER BY
          m.seq DESC
        LIMIT CASE WHEN x.seq_bound IS NULL THEN x.n_finite ELSE x.last_pos END - x.need_from + 1
      ) AS n
      ORDER BY
        n.seq
    ) AS o
    WHERE
      x.need_from <= x.base
  ) AS h
    ON TRUE
  OFFSET 0
), points AS (
  SELECT
    v.run_pk,
    v.key_id,
    v.project_id,
    v.user_name,
    v.run_name,
    v.steps,
    v.times,
    v.vals,
    e.pos,
    e.pos - v.off AS i
  FROM vals AS v
  CROSS JOIN LATERAL GENERATE_SERIES(GREATEST(v.first_pos, %(span_min)s), v.last_pos) AS e(pos)
)
SELECT
  p.run_pk,
  p.key_id,
  p.pos,
  p.steps[p.i] AS step,
  p.times[p.i] AS time,
  p.vals[p.i] AS value,
  o.d AS aggregate,
  p.vals[p.i - o.size + 1:p.i] AS window_values,
  o.prior_aggregate,
  CASE
    WHEN o.prior_segment IS NOT NULL
    THEN p.vals[p.i - o.span + 1:p.i - o.size]
  END AS prior_values,
  o.current_aggregate,
  o.rule
FROM points AS p
CROSS JOIN LATERAL (
  SELECT
    ARRAY[
      MAX(w.v) FILTER(WHERE
        w.back <= %(segment_1_to)s),
      MAX(w.v) FILTER(WHERE
        w.back BETWEEN %(segment_2_from)s AND %(segment_2_to)s)
    ] AS aggregates
  FROM (
    SELECT
      UNNEST(p.vals[p.i - %(span_max)s + 1:p.i]) AS v,
      GENERATE_SERIES(LEAST(p.i, %(span_max)s) - 1, 0, -1) AS back
  ) AS w
) AS a
CROSS JOIN LATERAL (
  SELECT
    ru.*,
    a.aggregates[ru.current_segment] AS current_aggregate,
    a.aggregates[ru.prior_segment] AS prior_aggregate,
    CASE
      WHEN ru.prior_segment IS NULL
      THEN a.aggregates[ru.current_segment]
      WHEN ru.relative
      THEN (
        a.aggregates[ru.current_segment] - a.aggregates[ru.prior_segment]
      ) / NULLIF(ABS(a.aggregates[ru.prior_segment]), 0)
      ELSE a.aggregates[ru.current_segment] - a.aggregates[ru.prior_segment]
    END AS d
  FROM rules AS ru
  WHERE
    ru.project_id = p.project_id
    AND p.pos >= ru.span
    AND (
      ru.run_user IS NULL OR ru.run_user = p.user_name
    )
    AND (
      ru.run_name_regex IS NULL OR p.run_name ~ ru.run_name_regex
    )
  OFFSET 0
) AS o
CROSS JOIN LATERAL (
  SELECT
    CASE o.direction WHEN 'decrease' THEN -o.d WHEN 'any' THEN ABS(o.d) ELSE o.d END AS tested
) AS t
WHERE
  CASE o.operator
    WHEN '>'
    THEN t.tested > o.bound
    WHEN '>='
    THEN t.tested >= o.bound
    WHEN '<'
    THEN t.tested < o.bound
    WHEN '<='
    THEN t.tested <= o.bound
    WHEN '=='
    THEN t.tested = o.bound
    ELSE t.tested <> o.bound
  END
  AND p.times[p.i] >= CAST(%(since)s AS TIMESTAMPTZ)
ORDER BY
  o.rule,
  p.run_pk,
  p.pos
