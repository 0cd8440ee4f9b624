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
  JOIN projects AS pr
    ON pr.id = r.project_id
  WHERE
    pr.entity = %(entity)s AND pr.name = %(project)s
), vals AS (
  SELECT
    x.run_pk,
    x.key_id,
    x.first_pos,
    x.need_from - 1 + t.ord AS pos,
    t.step,
    t.time,
    t.value
  FROM series AS x
  CROSS JOIN LATERAL UNNEST(x.tail_step[x.need_from - x.base:x.last_pos - x.base], x.tail_time[x.need_from - x.base:x.last_pos - x.base], x.tail_value[x.need_from - x.base:x.last_pos - x.base]) WITH ORDINALITY AS t(step, time, value, ord)
  WHERE
    x.need_from > x.base
  UNION ALL
  SELECT
    x.run_pk,
    x.key_id,
    x.first_pos,
    h.pos,
    h.step,
    h.time,
    h.value
  FROM series AS x
  CROSS JOIN LATERAL (
    SELECT
      x.n_finite + 1 - ROW_NUMBER() OVER (ORDER BY m.seq DESC) AS pos,
      m.step,
      m.time,
      m.value
    FROM metric_points AS m
    WHERE
      m.run_pk = x.run_pk
      AND m.key_id = x.key_id
      AND m.value < CAST('Infinity' AS DOUBLE PRECISION)
      AND m.value > CAST('-Infinity' AS DOUBLE PRECISION)
    ORDER BY
      m.seq DESC
    LIMIT x.n_finite - x.need_from + 1
  ) AS h
  WHERE
    x.need_from <= x.base AND h.pos <= x.last_pos
), win AS (
  SELECT
    v.run_pk,
    v.key_id,
    v.first_pos,
    v.pos,
    v.step,
    v.time,
    v.value,
    MAX(v.value) OVER (
      PARTITION BY v.run_pk
      ORDER BY v.pos
      ROWS BETWEEN %(current_preceding)s PRECEDING AND CURRENT ROW
    ) AS current_aggregate,
    ARRAY_AGG(v.value) OVER (
      PARTITION BY v.run_pk
      ORDER BY v.pos
      ROWS BETWEEN %(current_preceding)s PRECEDING AND CURRENT ROW
    ) AS window_values,
    MAX(v.value) OVER (
      PARTITION BY v.run_pk
      ORDER BY v.pos
      ROWS BETWEEN %(span_preceding)s PRECEDING AND %(current_window)s PRECEDING
    ) AS prior_aggregate,
    ARRAY_AGG(v.value) OVER (
      PARTITION BY v.run_pk
      ORDER BY v.pos
      ROWS BETWEEN %(span_preceding)s PRECEDING AND %(current_window)s PRECEDING
    ) AS prior_values
  FROM vals AS v
)
SELECT
  c.run_pk,
  c.key_id,
  c.pos,
  c.step,
  c.time,
  c.value,
  c.aggregate,
  c.window_values,
  c.prior_aggregate,
  c.prior_values,
  c.current_aggregate
FROM (
  SELECT
    w.run_pk,
    w.key_id,
    w.first_pos,
    w.pos,
    w.step,
    w.time,
    w.value,
    w.window_values,
    w.prior_aggregate,
    w.prior_values,
    w.current_aggregate - w.prior_aggregate AS aggregate,
    w.current_aggregate
  FROM win AS w
) AS c
WHERE
  c.pos >= c.first_pos
  AND (
    c.pos >= %(span)s AND ABS(c.aggregate) >= %(amount)s
  )
ORDER BY
  c.run_pk,
  c.pos
