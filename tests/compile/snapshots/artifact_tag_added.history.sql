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
WHERE
  (
    (
      (
        (
          e.time >= CAST(%(since)s AS TIMESTAMPTZ) AND e.type = %(event_kind)s
        )
        AND pr.entity = %(entity)s
      )
      AND pr.name = %(project)s
    )
    AND e.registry_id IS NULL
  )
  AND e.details ->> 'tag' ~ %(tag_regex)s
ORDER BY
  e.id
