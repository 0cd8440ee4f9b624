SELECT
  n.run_pk,
  n.key_id,
  n.seq,
  n.step,
  n.time,
  n.value
FROM nonfinite_points AS n
JOIN metric_keys AS k
  ON k.id = n.key_id
JOIN runs AS r
  ON r.id = n.run_pk
WHERE
  (
    (
      (
        (
          n.xid >= CAST(%(from_xid)s AS xid8) AND n.xid < CAST(%(to_xid)s AS xid8)
        )
        AND k.key = %(metric)s
      )
      AND n.value = ANY(
        CAST(%(values)s AS DOUBLE PRECISION[])
      )
    )
    AND r.project_id = (
      SELECT
        pr.id
      FROM projects AS pr
      WHERE
        pr.entity = %(entity)s AND pr.name = %(project)s
    )
  )
  AND r.name ~ %(run_name_regex)s
ORDER BY
  n.run_pk,
  n.seq
