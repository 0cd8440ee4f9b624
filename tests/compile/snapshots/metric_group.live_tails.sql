WITH scopes AS MATERIALIZED (
  SELECT
    ARRAY_AGG(pr.id ORDER BY r.rule) AS project_ids
  FROM UNNEST(CAST(%(entity)s AS TEXT[]), CAST(%(project)s AS TEXT[])) WITH ORDINALITY AS r(entity, project, rule)
  LEFT JOIN projects AS pr
    ON pr.entity = r.entity AND pr.name = r.project
), pending AS (
  SELECT
    b.run_pk,
    b.key_id,
    MIN(b.first_pos) AS first_pos,
    MAX(b.last_pos) AS last_pos,
    CASE WHEN COUNT(b.seq_bound) = COUNT(*) THEN MAX(b.seq_bound) END AS seq_bound
  FROM series_batches AS b
  WHERE
    (
      b.key_id = (
        SELECT
          k.id
        FROM metric_keys AS k
        WHERE
          k.key = %(metric)s
      )
      AND b.xid >= CAST(%(from_xid)s AS xid8)
    )
    AND b.xid < CAST(%(to_xid)s AS xid8)
  GROUP BY
    b.run_pk,
    b.key_id
), series AS NOT MATERIALIZED (
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
        UNNEST(sc.project_ids)
      FROM scopes AS sc
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
    x.base AS off,
    x.tail_step AS steps,
    x.tail_time AS times,
    x.tail_value AS vals
  FROM series AS x
  WHERE
    x.need_from > x.base
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
), candidates AS (
  SELECT
    p.run_pk,
    p.key_id,
    p.project_id,
    p.user_name,
    p.run_name,
    p.steps,
    p.times,
    p.vals,
    p.pos,
    p.i,
    a.aggregates,
    CASE
      WHEN (
        a.aggregates[1]
      ) >= %(class_1_min)s
      OR -(
        a.aggregates[1]
      ) >= %(class_2_min)s
      OR (
        a.aggregates[2]
      ) >= %(class_3_min)s
      OR -(
        (
          a.aggregates[3] - a.aggregates[4]
        ) / NULLIF(ABS(a.aggregates[4]), 0)
      ) >= %(class_4_min)s
      OR ABS(a.aggregates[5] - a.aggregates[6]) >= %(class_5_min)s
      OR ABS(
        CASE
          WHEN a.aggregates[9] > 0
          THEN -a.aggregates[7] / NULLIF(
            SQRT(
              GREATEST(%(segment_7_to)s * a.aggregates[8] - a.aggregates[7] * a.aggregates[7], 0)
            ),
            0
          )
        END
      ) >= %(class_6_min)s
      OR (
        CASE
          WHEN a.aggregates[12] > 0
          THEN -a.aggregates[10] / NULLIF(
            SQRT(
              GREATEST(%(segment_10_to)s * a.aggregates[11] - a.aggregates[10] * a.aggregates[10], 0)
            ),
            0
          )
        END
      ) >= %(class_7_min)s
      THEN (
        CAST(%(class_1_rules)s AS INT[])
      )[1:WIDTH_BUCKET((
        a.aggregates[1]
      ), CAST(%(class_1_keys)s AS DOUBLE PRECISION[]))] || (
        CAST(%(class_2_rules)s AS INT[])
      )[1:WIDTH_BUCKET(-(
        a.aggregates[1]
      ), CAST(%(class_2_keys)s AS DOUBLE PRECISION[]))] || (
        CAST(%(class_3_rules)s AS INT[])
      )[1:WIDTH_BUCKET((
        a.aggregates[2]
      ), CAST(%(class_3_keys)s AS DOUBLE PRECISION[]))] || (
        CAST(%(class_4_rules)s AS INT[])
      )[1:WIDTH_BUCKET(
        -(
          (
            a.aggregates[3] - a.aggregates[4]
          ) / NULLIF(ABS(a.aggregates[4]), 0)
        ),
        CAST(%(class_4_keys)s AS DOUBLE PRECISION[])
      )] || (
        CAST(%(class_5_rules)s AS INT[])
      )[1:WIDTH_BUCKET(
        ABS(a.aggregates[5] - a.aggregates[6]),
        CAST(%(class_5_keys)s AS DOUBLE PRECISION[])
      )] || (
        CAST(%(class_6_rules)s AS INT[])
      )[1:WIDTH_BUCKET(
        ABS(
          CASE
            WHEN a.aggregates[9] > 0
            THEN -a.aggregates[7] / NULLIF(
              SQRT(
                GREATEST(%(segment_7_to)s * a.aggregates[8] - a.aggregates[7] * a.aggregates[7], 0)
              ),
              0
            )
          END
        ),
        CAST(%(class_6_keys)s AS DOUBLE PRECISION[])
      )] || (
        CAST(%(class_7_rules)s AS INT[])
      )[1:WIDTH_BUCKET(
        (
          CASE
            WHEN a.aggregates[12] > 0
            THEN -a.aggregates[10] / NULLIF(
              SQRT(
                GREATEST(%(segment_10_to)s * a.aggregates[11] - a.aggregates[10] * a.aggregates[10], 0)
              ),
              0
            )
          END
        ),
        CAST(%(class_7_keys)s AS DOUBLE PRECISION[])
      )]
    END AS candidates
  FROM points AS p
  CROSS JOIN LATERAL (
    SELECT
      ARRAY[
        AVG(w.v) FILTER(WHERE
          w.back <= %(segment_1_to)s),
        MAX(w.v) FILTER(WHERE
          w.back <= %(segment_2_to)s),
        AVG(w.v) FILTER(WHERE
          w.back <= %(segment_3_to)s),
        AVG(w.v) FILTER(WHERE
          w.back BETWEEN %(segment_4_from)s AND %(segment_4_to)s),
        MAX(w.v) FILTER(WHERE
          w.back <= %(segment_5_to)s),
        MAX(w.v) FILTER(WHERE
          w.back BETWEEN %(segment_6_from)s AND %(segment_6_to)s),
        SUM(w.dv) FILTER(WHERE
          w.back BETWEEN %(segment_7_from)s AND %(segment_7_to)s),
        SUM(w.dv * w.dv) FILTER(WHERE
          w.back BETWEEN %(segment_8_from)s AND %(segment_8_to)s),
        MAX(ABS(w.dl)) FILTER(WHERE
          w.back BETWEEN %(segment_9_from)s AND %(segment_9_to)s),
        SUM(w.dv) FILTER(WHERE
          w.back BETWEEN %(segment_10_from)s AND %(segment_10_to)s),
        SUM(w.dv * w.dv) FILTER(WHERE
          w.back BETWEEN %(segment_11_from)s AND %(segment_11_to)s),
        MAX(ABS(w.dl)) FILTER(WHERE
          w.back BETWEEN %(segment_12_from)s AND %(segment_12_to)s)
      ] AS aggregates
    FROM (
      SELECT
        s.v,
        s.back,
        s.v - p.vals[p.i] AS dv,
        s.v - p.vals[p.i - 1] AS dl
      FROM (
        SELECT
          UNNEST(p.vals[p.i - %(span_max)s + 1:p.i]) AS v,
          GENERATE_SERIES(LEAST(p.i, %(span_max)s) - 1, 0, -1) AS back
      ) AS s
      OFFSET 0
    ) AS w
  ) AS a
  OFFSET 0
)
SELECT
  c.run_pk,
  c.key_id,
  c.pos,
  c.steps[c.i] AS step,
  c.times[c.i] AS time,
  c.vals[c.i] AS value,
  o.d AS aggregate,
  c.vals[c.i - ru.size + 1:c.i] AS window_values,
  o.prior_aggregate,
  CASE
    WHEN ru.prior_segment IS NOT NULL
    THEN c.vals[c.i - ru.span + 1:c.i - ru.size]
  END AS prior_values,
  o.current_aggregate,
  ru.rule,
  lf.value_time AS last_fired
FROM candidates AS c
CROSS JOIN scopes AS sc
CROSS JOIN LATERAL UNNEST(c.candidates) AS k(rule)
CROSS JOIN LATERAL (
  SELECT
    k.rule,
    sc.project_ids[k.rule] AS project_id,
    (
      CAST(%(run_user)s AS TEXT[])
    )[k.rule] AS run_user,
    (
      CAST(%(run_name_regex)s AS TEXT[])
    )[k.rule] AS run_name_regex,
    (
      CAST(%(span)s AS INT[])
    )[k.rule] AS span,
    (
      CAST(%(size)s AS INT[])
    )[k.rule] AS size,
    (
      CAST(%(current_segment)s AS INT[])
    )[k.rule] AS current_segment,
    (
      CAST(%(prior_segment)s AS INT[])
    )[k.rule] AS prior_segment,
    (
      CAST(%(relative)s AS BOOLEAN[])
    )[k.rule] AS relative,
    (
      CAST(%(direction)s AS TEXT[])
    )[k.rule] AS direction,
    (
      CAST(%(operator)s AS TEXT[])
    )[k.rule] AS operator,
    (
      CAST(%(bound)s AS DOUBLE PRECISION[])
    )[k.rule] AS bound,
    (
      CAST(%(zscore)s AS BOOLEAN[])
    )[k.rule] AS zscore,
    (
      CAST(%(automation_id)s AS BIGINT[])
    )[k.rule] AS automation_id,
    (
      CAST(%(cooldown_us)s AS BIGINT[])
    )[k.rule] AS cooldown_us
  OFFSET 0
) AS ru
CROSS JOIN LATERAL (
  SELECT
    CASE
      WHEN ru.zscore
      THEN c.vals[c.i] + c.aggregates[ru.current_segment] / (
        ru.span - 1
      )
      ELSE c.aggregates[ru.current_segment]
    END AS current_aggregate,
    CASE
      WHEN ru.zscore
      THEN SQRT(
        GREATEST(
          (
            ru.span - 1
          ) * c.aggregates[ru.current_segment + 1] - c.aggregates[ru.current_segment] * c.aggregates[ru.current_segment],
          0
        )
      ) / (
        ru.span - 1
      )
      ELSE c.aggregates[ru.prior_segment]
    END AS prior_aggregate,
    CASE
      WHEN ru.zscore
      THEN CASE
        WHEN c.aggregates[ru.current_segment + 2] > 0
        THEN -c.aggregates[ru.current_segment] / NULLIF(
          SQRT(
            GREATEST(
              (
                ru.span - 1
              ) * c.aggregates[ru.current_segment + 1] - c.aggregates[ru.current_segment] * c.aggregates[ru.current_segment],
              0
            )
          ),
          0
        )
      END
      WHEN ru.prior_segment IS NULL
      THEN c.aggregates[ru.current_segment]
      WHEN ru.relative
      THEN (
        c.aggregates[ru.current_segment] - c.aggregates[ru.prior_segment]
      ) / NULLIF(ABS(c.aggregates[ru.prior_segment]), 0)
      ELSE c.aggregates[ru.current_segment] - c.aggregates[ru.prior_segment]
    END AS d
) AS o
CROSS JOIN LATERAL (
  SELECT
    CASE ru.direction WHEN 'decrease' THEN -o.d WHEN 'any' THEN ABS(o.d) ELSE o.d END AS tested
) AS t
LEFT JOIN LATERAL (
  SELECT
    tr.value_time
  FROM triggers AS tr
  WHERE
    tr.automation_id = ru.automation_id AND tr.run_pk = c.run_pk
  ORDER BY
    tr.value_time DESC
  LIMIT 1
) AS lf
  ON TRUE
WHERE
  (
    ru.project_id = c.project_id
    AND c.pos >= ru.span
    AND (
      ru.run_user IS NULL OR ru.run_user = c.user_name
    )
    AND (
      ru.run_name_regex IS NULL OR c.run_name ~ ru.run_name_regex
    )
    AND CASE ru.operator
      WHEN '>'
      THEN t.tested > ru.bound
      WHEN '>='
      THEN t.tested >= ru.bound
      WHEN '<'
      THEN t.tested < ru.bound
      WHEN '<='
      THEN t.tested <= ru.bound
      WHEN '=='
      THEN t.tested = ru.bound
      ELSE t.tested <> ru.bound
    END
  )
  AND (
    ru.cooldown_us IS NULL
    OR lf.value_time IS NULL
    OR c.times[c.i] >= lf.value_time + ru.cooldown_us * INTERVAL '1 MICROSECOND'
  )
UNION ALL
(
  SELECT
    NULL AS run_pk,
    NULL AS key_id,
    NULL AS pos,
    NULL AS step,
    NULL AS time,
    NULL AS value,
    NULL AS aggregate,
    NULL AS window_values,
    NULL AS prior_aggregate,
    NULL AS prior_values,
    NULL AS current_aggregate,
    0 AS rule,
    NULL AS last_fired
  FROM series AS x
  WHERE
    x.need_from <= x.base
  LIMIT 1
)
ORDER BY
  rule NULLS FIRST,
  run_pk NULLS FIRST,
  pos NULLS FIRST
