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
JOIN registries AS rg
  ON rg.id = e.registry_id
JOIN registry_collections AS rc
  ON rc.id = e.registry_collection_id
WHERE
  (
    (
      (
        (
          e.xid >= CAST(%(from_xid)s AS xid8) AND e.xid < CAST(%(to_xid)s AS xid8)
        )
        AND e.type = %(event_kind)s
      )
      AND rg.name = %(registry)s
    )
    AND rc.name = %(collection)s
  )
  AND EXISTS(
    SELECT
      1
    FROM JSONB_ARRAY_ELEMENTS_TEXT(e.details -> 'aliases') AS held(alias)
    WHERE
      held.alias ~ %(alias_regex)s
  )
ORDER BY
  e.id
