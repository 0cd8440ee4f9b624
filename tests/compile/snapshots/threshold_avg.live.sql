WITH pending AS (
  SELECT
    b.run_pk,
    b.key_id,
    MIN(b.first_pos) AS first_pos,
    MAX(b.last_pos) AS last_pos
  FROM series_batches AS b
  JOIN metric_keys AS k
    ON k.id = b.key_id
  WHERE
    (
      k.key = %(metric)s AND b.xid >= CAST(%(from_xid)s AS xid8)
    )
    AND b.xid < CAST(%(to_xid)s AS xid8)
  GROUP BY
    b.run_pk,
    b.key_id
), series AS (
  SELECT
    p.run_pk,
    p.key_id,
    p.first_pos,
    p.last_pos,
    s.n_finite,
    s.n_finite - CARDINALITY(s.tail_value) AS base,
    GREATEST(1, p.first_pos - %(span)s + 1) AS need_from,
    s.tail_step,
    s.tail_time,
    s.tail_value
  FROM pending AS p
  JOIN series_state AS s
    ON s.key_id = p.key_id AND s.run_pk = p.run_pk
  JOIN runs AS r
    ON r.id = p.run_pk
  WHERE
    r.project_id = (
      SELECT
        pr.id
      FROM projects AS pr
      WHERE
        pr.entity = %(entity)s AND pr.name = %(project)s
    )
), vals AS MATERIALIZED (
  SELECT
    x.run_pk,
    x.key_id,
    x.first_pos,
    x.last_pos,
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
            m.run_pk = x.run_pk AND m.key_id = x.key_id
          )
          AND (
            m.value < CAST('Infinity' AS DOUBLE PRECISION)
            AND m.value > CAST('-Infinity' AS DOUBLE PRECISION)
          )
        ORDER BY
          m.seq DESC
        LIMIT x.n_finite - x.need_from + 1
      ) AS n
      ORDER BY
        n.seq
    ) AS o
    WHERE
      x.need_from <= x.base
  ) AS h
    ON TRUE
), points AS (
  SELECT
    v.run_pk,
    v.key_id,
    v.steps,
    v.times,
    v.vals,
    e.pos,
    e.pos - v.off AS i
  FROM vals AS v
  CROSS JOIN LATERAL GENERATE_SERIES(GREATEST(v.first_pos, %(span)s), v.last_pos) AS e(pos)
)
SELECT
  p.run_pk,
  p.key_id,
  p.pos,
  p.steps[p.i] AS step,
  p.times[p.i] AS time,
  p.vals[p.i] AS value,
  a.aggregate,
  p.vals[p.i - %(window)s + 1:p.i] AS window_values,
  NULL AS prior_aggregate,
  CAST(NULL AS DOUBLE PRECISION[]) AS prior_values
FROM points AS p
CROSS JOIN LATERAL (
  SELECT
    AVG(s.u) AS aggregate
  FROM (
    SELECT
      UNNEST(p.vals[p.i - %(window)s + 1:p.i]) AS u
  ) AS s
) AS a
WHERE
  a.aggregate > %(threshold)s
ORDER BY
  p.run_pk,
  p.pos
