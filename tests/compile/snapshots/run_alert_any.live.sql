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
      e.xid >= CAST(%(from_xid)s AS xid8) AND e.xid < CAST(%(to_xid)s AS xid8)
    )
    AND e.type = %(event_kind)s
  )
  AND r.project_id = (
    SELECT
      pr.id
    FROM projects AS pr
    WHERE
      pr.entity = %(entity)s AND pr.name = %(project)s
  )
ORDER BY
  e.id
