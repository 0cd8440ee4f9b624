-- The logging SDK (engine/sdk/). Every change is written with its `events` row by ONE
-- statement (data-modifying CTEs), so a change and its event always commit together and
-- cost one round trip. Event `time` and the rows' timestamps come from engine.clock.now().

-- Runs ------------------------------------------------------------------------------------

-- name: upsert_project
-- DO UPDATE (not DO NOTHING) so that RETURNING always yields the id, even under concurrency.
INSERT INTO projects (entity, name) VALUES (%(entity)s, %(project)s)
ON CONFLICT (entity, name) DO UPDATE SET entity = EXCLUDED.entity
RETURNING id;

-- name: create_run
-- A new run, with its transition from NULL into 'running' and its event (the function
-- create_run of engine/sql/migrations, whose statement keeps its plan). Returns (run_pk,
-- project_id), or nothing when the run id exists already.
SELECT run_pk, project_id
FROM create_run(%(entity)s::text, %(project)s::text, %(run_id)s::text, %(name)s::text, %(user)s::text,
                %(config)s::jsonb, %(tags)s::text[], %(at)s::timestamptz);

-- name: find_created_run
-- The run an SDK process created when the answer to its creation was lost and it tries
-- again: same project and id, same creation time (to the microsecond) and author.
SELECT r.id, r.project_id
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE p.entity = %(entity)s AND p.name = %(project)s AND r.run_id = %(run_id)s
  AND r.created_at = %(at)s AND r.user_name IS NOT DISTINCT FROM %(user)s;

-- name: lock_run
-- The run of a project by its id, locked for a state change.
SELECT r.id, r.state
FROM runs r
WHERE r.project_id = %(project_id)s AND r.run_id = %(run_id)s
FOR UPDATE;

-- name: run_state
SELECT state FROM runs WHERE id = %(run_pk)s;

-- name: lock_run_alerts
-- Alerts of a run are serialised by its row, so that insert_run_alert (a new statement, hence
-- a new snapshot) sees an alert another process raised just before.
SELECT id FROM runs WHERE id = %(run_pk)s FOR NO KEY UPDATE;

-- name: insert_run_alert
-- An alert from training code, unless the run raised one with the same title less than
-- %(wait)s before (W&B's wait_duration): then nothing is written. Runs after lock_run_alerts.
INSERT INTO events (time, type, author, project_id, run_pk, details)
SELECT %(at)s, 'run_alert', %(author)s, r.project_id, r.id,
       jsonb_build_object('title', %(title)s::text, 'text', %(text)s::text, 'level', %(level)s::text,
                          'wait_duration', %(wait_seconds)s::double precision)
FROM runs r
WHERE r.id = %(run_pk)s
  AND NOT EXISTS (
      SELECT 1 FROM events e
      WHERE e.run_pk = %(run_pk)s AND e.type = 'run_alert' AND e.details ->> 'title' = %(title)s
        AND e.time > %(at)s - %(wait)s::interval AND e.time <= %(at)s
  )
RETURNING id;

-- name: find_run
SELECT r.id, r.state
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE p.entity = %(entity)s AND p.name = %(project)s AND r.run_id = %(run_id)s;

-- name: update_run_attributes
-- On resume: what the caller gave again replaces what was stored (NULL keeps it).
UPDATE runs SET
    name   = coalesce(%(name)s, name),
    config = coalesce(%(config)s, config),
    tags   = coalesce(%(tags)s, tags)
WHERE id = %(run_pk)s
RETURNING name, config, tags;

-- name: run_max_steps
-- Where a resumed run's step counters continue (-1: nothing logged yet).
-- (kept on the run by every flush: ingest_flush).
SELECT step, system_step FROM runs WHERE id = %(run_pk)s;

-- name: transition_run
-- One state change: runs.state, a run_transitions row and a 'run_state' event, only when the
-- run is in one of the given from_states (returns nothing otherwise, and changes nothing;
-- else the state it left). It ends the run's pending stop requests (stop_run), whatever the
-- new state: a resumed run starts with none. %(stopped_by)s: the automation whose stop
-- request the run obeys (killed by stop_run; its event says so), else NULL. The function
-- transition_run of engine/sql/migrations, whose statement keeps its plan.
SELECT transition_run AS from_state
FROM transition_run(%(run_pk)s::bigint, %(from_states)s::text[], %(to_state)s::text, %(exit_code)s::integer,
                    %(author)s::text, %(at)s::timestamptz, %(stopped_by)s::text);

-- name: pending_stop_requests
-- The pending stop requests (stop_run) of these runs, oldest first: read in every flush's
-- transaction and by `engine web`'s log route. The partial index holds pending ones only
-- (usually none), so this costs a probe of a nearly empty index.
SELECT run_pk, automation
FROM stop_requests
WHERE run_pk = ANY(%(run_pks)s::bigint[]) AND ended_at IS NULL
ORDER BY trigger_id;

-- Ingest (the flush; the series upsert and the NOTIFY are in ingest.sql) ------------------

-- name: next_ingest_batch
SELECT nextval('ingest_batch_seq');

-- name: batch_committed
-- Whether the flush of one batch id committed: its points (seq = batch id << 20 | ordinal, in
-- either table) exist for a run of it. Asked only when the connection broke while the
-- flush's COMMIT was on its way, before the batch is sent again.
SELECT EXISTS (SELECT 1 FROM metric_points WHERE run_pk = %(run_pk)s AND seq >= %(lo)s AND seq < %(hi)s)
    OR EXISTS (SELECT 1 FROM system_metrics WHERE run_pk = %(run_pk)s AND seq >= %(lo)s AND seq < %(hi)s);

-- name: intern_keys
INSERT INTO metric_keys (key) SELECT unnest(%(keys)s::text[]) ON CONFLICT (key) DO NOTHING;

-- name: key_ids
SELECT key, id FROM metric_keys WHERE key = ANY(%(keys)s::text[]);

-- name: copy_metric_points
-- Column order is the order of the rows engine/sdk/copy_binary.py writes (keep in sync).
COPY metric_points (time, run_pk, key_id, step, seq, value) FROM STDIN (FORMAT BINARY);

-- name: copy_system_metrics
COPY system_metrics (time, run_pk, key_id, step, seq, value) FROM STDIN (FORMAT BINARY);

-- Artifacts -------------------------------------------------------------------------------

-- name: upsert_collection
-- The DO UPDATE also row-locks the collection, which serialises version numbering.
INSERT INTO artifact_collections (project_id, name, type) VALUES (%(project_id)s, %(name)s, %(type)s)
ON CONFLICT (project_id, name) DO UPDATE SET name = EXCLUDED.name
RETURNING id, type;

-- name: next_version_index
SELECT coalesce(max(version_index) + 1, 0) FROM artifact_versions WHERE collection_id = %(collection_id)s;

-- name: create_version
WITH v AS (
    INSERT INTO artifact_versions (collection_id, version_index, digest, metadata, run_pk, author, created_at)
    VALUES (%(collection_id)s, %(version_index)s, %(digest)s, %(metadata)s, %(run_pk)s, %(author)s, %(at)s)
    RETURNING id, collection_id, version_index
)
INSERT INTO events (time, type, author, project_id, run_pk, collection_id, version_id, details)
SELECT %(at)s, 'artifact_version_created', %(author)s, %(project_id)s, %(run_pk)s, v.collection_id, v.id,
       jsonb_build_object('collection', %(collection)s::text, 'collection_type', %(type)s::text,
                          'version_index', v.version_index, 'digest', %(digest)s::text)
FROM v
RETURNING version_id;

-- name: version_by_id
SELECT v.id, p.entity, p.name, c.name, c.type, v.version_index, v.digest, v.metadata, c.project_id, c.id
FROM artifact_versions v
JOIN artifact_collections c ON c.id = v.collection_id
JOIN projects p ON p.id = c.project_id
WHERE v.id = %(version_id)s;

-- name: version_by_index
SELECT v.id, p.entity, p.name, c.name, c.type, v.version_index, v.digest, v.metadata, c.project_id, c.id
FROM artifact_versions v
JOIN artifact_collections c ON c.id = v.collection_id
JOIN projects p ON p.id = c.project_id
WHERE p.entity = %(entity)s AND p.name = %(project)s AND c.name = %(collection)s
  AND v.version_index = %(version_index)s;

-- name: version_by_alias
SELECT v.id, p.entity, p.name, c.name, c.type, v.version_index, v.digest, v.metadata, c.project_id, c.id
FROM artifact_aliases a
JOIN artifact_versions v ON v.id = a.version_id
JOIN artifact_collections c ON c.id = a.collection_id
JOIN projects p ON p.id = c.project_id
WHERE p.entity = %(entity)s AND p.name = %(project)s AND c.name = %(collection)s AND a.alias = %(alias)s;

-- name: lock_version_collection
-- Alias changes in a collection take this row lock first, so that set_artifact_alias (a new
-- statement, hence a new snapshot) reads the alias's current holder reliably.
SELECT c.id FROM artifact_collections c JOIN artifact_versions v ON v.collection_id = c.id
WHERE v.id = %(version_id)s
FOR UPDATE OF c;

-- name: set_artifact_alias
-- Add an alias to a version; the primary key (collection_id, alias) makes this a move when
-- another version holds it. Nothing happens (and no event) when the version already has it.
-- Runs after lock_version_collection in the same transaction.
WITH v AS (
    SELECT v.id, v.collection_id, v.version_index, c.project_id, c.name, c.type
    FROM artifact_versions v JOIN artifact_collections c ON c.id = v.collection_id
    WHERE v.id = %(version_id)s
), prev AS (  -- same snapshot as `up`: the holder before the move
    SELECT a.version_id FROM artifact_aliases a JOIN v ON a.collection_id = v.collection_id
    WHERE a.alias = %(alias)s
), up AS (
    INSERT INTO artifact_aliases AS a (collection_id, alias, version_id, updated_at)
    SELECT collection_id, %(alias)s, id, %(at)s FROM v
    ON CONFLICT (collection_id, alias) DO UPDATE SET version_id = EXCLUDED.version_id, updated_at = EXCLUDED.updated_at
    WHERE a.version_id <> EXCLUDED.version_id
    RETURNING version_id
)
INSERT INTO events (time, type, author, project_id, run_pk, collection_id, version_id, details)
SELECT %(at)s, 'artifact_alias_added', %(author)s, v.project_id, %(run_pk)s, v.collection_id, v.id,
       jsonb_build_object('alias', %(alias)s::text, 'version_index', v.version_index,
                          'previous_version_id', (SELECT version_id FROM prev),
                          'collection', v.name, 'collection_type', v.type)
FROM up JOIN v ON v.id = up.version_id
RETURNING id;

-- name: add_artifact_tag
-- Any number of versions may carry a tag; re-adding it to the same version changes nothing.
WITH v AS (
    SELECT v.id, v.collection_id, v.version_index, c.project_id, c.name, c.type
    FROM artifact_versions v JOIN artifact_collections c ON c.id = v.collection_id
    WHERE v.id = %(version_id)s
), ins AS (
    INSERT INTO artifact_tags (version_id, tag, created_at)
    SELECT id, %(tag)s, %(at)s FROM v
    ON CONFLICT (version_id, tag) DO NOTHING
    RETURNING version_id
)
INSERT INTO events (time, type, author, project_id, run_pk, collection_id, version_id, details)
SELECT %(at)s, 'artifact_tag_added', %(author)s, v.project_id, %(run_pk)s, v.collection_id, v.id,
       jsonb_build_object('tag', %(tag)s::text, 'version_index', v.version_index,
                          'collection', v.name, 'collection_type', v.type)
FROM ins JOIN v ON v.id = ins.version_id
RETURNING id;

-- name: remove_artifact_alias
-- Take an alias off a version (no event: no rule reacts to a removal). Nothing when the
-- version does not hold it. Runs after lock_version_collection in the same transaction.
DELETE FROM artifact_aliases a USING artifact_versions v
WHERE v.id = %(version_id)s AND a.collection_id = v.collection_id AND a.version_id = v.id AND a.alias = %(alias)s
RETURNING a.alias;

-- name: remove_artifact_tag
-- Take a tag off a version, with its event; nothing (and no event) when it did not have it.
WITH del AS (
    DELETE FROM artifact_tags WHERE version_id = %(version_id)s AND tag = %(tag)s
    RETURNING version_id
), v AS (
    SELECT v.id, v.collection_id, v.version_index, c.project_id, c.name, c.type
    FROM artifact_versions v JOIN artifact_collections c ON c.id = v.collection_id
    WHERE v.id = %(version_id)s
)
INSERT INTO events (time, type, author, project_id, run_pk, collection_id, version_id, details)
SELECT %(at)s, 'artifact_tag_removed', %(author)s, v.project_id, %(run_pk)s, v.collection_id, v.id,
       jsonb_build_object('tag', %(tag)s::text, 'version_index', v.version_index,
                          'collection', v.name, 'collection_type', v.type)
FROM del JOIN v ON v.id = del.version_id
RETURNING id;

-- name: collection_by_name
SELECT c.id, c.project_id, c.type
FROM artifact_collections c JOIN projects p ON p.id = c.project_id
WHERE p.entity = %(entity)s AND p.name = %(project)s AND c.name = %(collection)s;

-- name: add_collection_tag
-- A tag on a project's artifact collection; re-adding it changes nothing (and no event).
WITH ins AS (
    INSERT INTO artifact_collection_tags (collection_id, tag, created_at)
    VALUES (%(collection_id)s, %(tag)s, %(at)s)
    ON CONFLICT (collection_id, tag) DO NOTHING
    RETURNING collection_id
)
INSERT INTO events (time, type, author, project_id, collection_id, details)
SELECT %(at)s, 'collection_tag_added', %(author)s, c.project_id, c.id,
       jsonb_build_object('tag', %(tag)s::text, 'collection', c.name, 'collection_type', c.type)
FROM ins JOIN artifact_collections c ON c.id = ins.collection_id
RETURNING id;

-- name: remove_collection_tag
WITH del AS (
    DELETE FROM artifact_collection_tags WHERE collection_id = %(collection_id)s AND tag = %(tag)s
    RETURNING collection_id
)
INSERT INTO events (time, type, author, project_id, collection_id, details)
SELECT %(at)s, 'collection_tag_removed', %(author)s, c.project_id, c.id,
       jsonb_build_object('tag', %(tag)s::text, 'collection', c.name, 'collection_type', c.type)
FROM del JOIN artifact_collections c ON c.id = del.collection_id
RETURNING id;

-- Registries ------------------------------------------------------------------------------

-- name: upsert_registry
INSERT INTO registries (name) VALUES (%(registry)s)
ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
RETURNING id;

-- name: upsert_registry_collection
-- Row-locks the registry collection, which serialises link numbering.
INSERT INTO registry_collections (registry_id, name, type) VALUES (%(registry_id)s, %(collection)s, %(type)s)
ON CONFLICT (registry_id, name) DO UPDATE SET name = EXCLUDED.name
RETURNING id;

-- name: find_link
SELECT id, version_index FROM registry_links
WHERE registry_collection_id = %(registry_collection_id)s AND version_id = %(version_id)s
  AND unlinked_at IS NULL;

-- name: registry_collection_by_name
-- Locked: links, unlinks and alias moves in a registry collection are serialised by this row.
SELECT rc.id, rc.registry_id, rc.type
FROM registry_collections rc JOIN registries g ON g.id = rc.registry_id
WHERE g.name = %(registry)s AND rc.name = %(collection)s
FOR UPDATE OF rc;

-- name: unlink
-- Unlink a version from a registry collection: the link is marked (its row stays, for the
-- events and triggers that point at it), its aliases go, and the event records which it
-- held. Nothing when the version is not linked there. Runs after registry_collection_by_name.
WITH l AS (
    UPDATE registry_links SET unlinked_at = %(at)s
    WHERE registry_collection_id = %(registry_collection_id)s AND version_id = %(version_id)s
      AND unlinked_at IS NULL
    RETURNING id, version_index, version_id
), gone AS (
    DELETE FROM registry_aliases a USING l WHERE a.link_id = l.id
    RETURNING a.alias
)
INSERT INTO events (time, type, author, project_id, collection_id, version_id, registry_id,
                    registry_collection_id, link_id, details)
SELECT %(at)s, 'artifact_unlinked', %(author)s, c.project_id, v.collection_id, v.id, rc.registry_id, rc.id, l.id,
       jsonb_build_object('registry', g.name, 'collection', rc.name, 'version_index', l.version_index,
                          'artifact_collection', c.name, 'artifact_version_index', v.version_index,
                          'aliases', coalesce((SELECT jsonb_agg(alias ORDER BY alias) FROM gone), '[]'::jsonb))
FROM l
JOIN artifact_versions v ON v.id = l.version_id
JOIN artifact_collections c ON c.id = v.collection_id
JOIN registry_collections rc ON rc.id = %(registry_collection_id)s
JOIN registries g ON g.id = rc.registry_id
RETURNING id, details -> 'aliases';

-- name: newest_link
-- The link `latest` goes back to when the newest one is unlinked.
SELECT id FROM registry_links
WHERE registry_collection_id = %(registry_collection_id)s AND unlinked_at IS NULL
ORDER BY version_index DESC LIMIT 1;

-- name: add_registry_collection_tag
WITH ins AS (
    INSERT INTO registry_collection_tags (registry_collection_id, tag, created_at)
    VALUES (%(registry_collection_id)s, %(tag)s, %(at)s)
    ON CONFLICT (registry_collection_id, tag) DO NOTHING
    RETURNING registry_collection_id
)
INSERT INTO events (time, type, author, registry_id, registry_collection_id, details)
SELECT %(at)s, 'collection_tag_added', %(author)s, rc.registry_id, rc.id,
       jsonb_build_object('tag', %(tag)s::text, 'registry', g.name, 'collection', rc.name)
FROM ins JOIN registry_collections rc ON rc.id = ins.registry_collection_id JOIN registries g ON g.id = rc.registry_id
RETURNING id;

-- name: remove_registry_collection_tag
WITH del AS (
    DELETE FROM registry_collection_tags
    WHERE registry_collection_id = %(registry_collection_id)s AND tag = %(tag)s
    RETURNING registry_collection_id
)
INSERT INTO events (time, type, author, registry_id, registry_collection_id, details)
SELECT %(at)s, 'collection_tag_removed', %(author)s, rc.registry_id, rc.id,
       jsonb_build_object('tag', %(tag)s::text, 'registry', g.name, 'collection', rc.name)
FROM del JOIN registry_collections rc ON rc.id = del.registry_collection_id JOIN registries g ON g.id = rc.registry_id
RETURNING id;

-- name: next_link_index
SELECT coalesce(max(version_index) + 1, 0) FROM registry_links
WHERE registry_collection_id = %(registry_collection_id)s;

-- name: create_link
-- `project_id` is the linked artifact's project; registry scopes match on registry_id.
WITH l AS (
    INSERT INTO registry_links (registry_collection_id, version_id, version_index, author, linked_at)
    VALUES (%(registry_collection_id)s, %(version_id)s, %(version_index)s, %(author)s, %(at)s)
    RETURNING id, version_index
)
INSERT INTO events (time, type, author, project_id, collection_id, version_id, registry_id,
                    registry_collection_id, link_id, details)
SELECT %(at)s, 'registry_version_linked', %(author)s, %(project_id)s, %(collection_id)s, %(version_id)s,
       %(registry_id)s, %(registry_collection_id)s, l.id,
       jsonb_build_object('registry', %(registry)s::text, 'collection', %(collection)s::text,
                          'version_index', l.version_index,
                          'artifact_collection', %(artifact_collection)s::text,
                          'artifact_version_index', %(artifact_version_index)s::integer,
                          'collection_type', %(type)s::text)
FROM l
RETURNING link_id;

-- name: lock_link_collection
-- As lock_version_collection, for aliases inside a registry collection.
SELECT rc.id FROM registry_collections rc JOIN registry_links l ON l.registry_collection_id = rc.id
WHERE l.id = %(link_id)s
FOR UPDATE OF rc;

-- name: set_registry_alias
-- An alias inside a registry collection (a move when another link holds it). The event has
-- registry_id/registry_collection_id set and project_id NULL, so that project-scoped alias
-- automations do not also fire on registry aliases. Runs after lock_link_collection.
WITH l AS (
    SELECT l.id, l.version_index, l.version_id, l.registry_collection_id, rc.registry_id,
           rc.name AS collection, g.name AS registry, v.collection_id
    FROM registry_links l
    JOIN registry_collections rc ON rc.id = l.registry_collection_id
    JOIN registries g ON g.id = rc.registry_id
    JOIN artifact_versions v ON v.id = l.version_id
    WHERE l.id = %(link_id)s
), prev AS (  -- same snapshot as `up`: the holder before the move
    SELECT a.link_id FROM registry_aliases a JOIN l ON a.registry_collection_id = l.registry_collection_id
    WHERE a.alias = %(alias)s
), up AS (
    INSERT INTO registry_aliases AS a (registry_collection_id, alias, link_id, updated_at)
    SELECT registry_collection_id, %(alias)s, id, %(at)s FROM l
    ON CONFLICT (registry_collection_id, alias) DO UPDATE
        SET link_id = EXCLUDED.link_id, updated_at = EXCLUDED.updated_at
    WHERE a.link_id <> EXCLUDED.link_id
    RETURNING link_id
)
INSERT INTO events (time, type, author, collection_id, version_id, registry_id, registry_collection_id, link_id,
                    details)
SELECT %(at)s, 'artifact_alias_added', %(author)s, l.collection_id, l.version_id, l.registry_id,
       l.registry_collection_id, l.id,
       jsonb_build_object('alias', %(alias)s::text, 'registry', l.registry, 'collection', l.collection,
                          'version_index', l.version_index, 'previous_link_id', (SELECT link_id FROM prev))
FROM up JOIN l ON l.id = up.link_id
RETURNING id;
