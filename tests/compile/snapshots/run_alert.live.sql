SELECT
  e.id,
  e.time,
  e.type,
  e.author,
  e.project_id,
  e.run_pk,
  e.collection_id,
  e.version_id,
  e.registry_id,
  e.registry_collection_id,
  e.link_id,
  e.details
FROM events AS e
JOIN runs AS r
  ON r.id = e.run_pk
WHERE
  (
    (
      (
        (
          (
            e.xid >= CAST(%(from_xid)s AS xid8) AND e.xid < CAST(%(to_xid)s AS xid8)
          )
          AND e.type = %(event_kind)s
        )
        AND r.project_id IN (
          SELECT
            pr.id
          FROM projects AS pr
          WHERE
            pr.entity = %(entity)s
        )
      )
      AND r.user_name = %(run_user)s
    )
    AND e.details ->> 'title' ~ %(title_regex)s
  )
  AND (
    e.details ->> 'level'
  ) = ANY(
    CAST(%(levels)s AS TEXT[])
  )
ORDER BY
  e.id
