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
JOIN projects AS pr
  ON pr.id = e.project_id
JOIN artifact_collections AS ac
  ON ac.id = e.collection_id
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
        AND pr.entity = %(entity)s
      )
      AND e.registry_id IS NULL
    )
    AND ac.name ~ %(collection_regex)s
  )
  AND e.details ->> 'tag' ~ %(tag_regex)s
ORDER BY
  e.id
