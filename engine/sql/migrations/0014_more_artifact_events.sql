-- Alerts from training code, tag removal, unlinking, collection tags, and entity scopes.

-- The new event kinds (the rule language's names, as in 0001).
ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN (
    'run_state', 'artifact_version_created', 'artifact_alias_added',
    'artifact_tag_added', 'registry_version_linked',
    'run_alert', 'artifact_tag_removed', 'artifact_unlinked',
    'collection_tag_added', 'collection_tag_removed'));

-- `run.alert` drops an alert whose title the same run raised within its wait_duration: the
-- run's last alerts of a title are found here, not by reading its whole event history.
CREATE INDEX events_run_alerts ON events (run_pk, (details ->> 'title'), time DESC)
    WHERE type = 'run_alert';

-- Unlinking keeps the link row (its events, and the triggers they caused, point at it) and
-- marks it; the version may be linked again, as a new link with the next index.
ALTER TABLE registry_links ADD COLUMN unlinked_at timestamptz;
ALTER TABLE registry_links DROP CONSTRAINT registry_links_registry_collection_id_version_id_key;
CREATE UNIQUE INDEX registry_links_active ON registry_links (registry_collection_id, version_id)
    WHERE unlinked_at IS NULL;

-- Tags on a collection (not on a version): a project's artifact collection, or a registry's.
CREATE TABLE artifact_collection_tags (
    collection_id  bigint NOT NULL REFERENCES artifact_collections (id) ON DELETE CASCADE,
    tag            text NOT NULL CHECK (length(tag) BETWEEN 1 AND 256),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, tag)
);
CREATE TABLE registry_collection_tags (
    registry_collection_id  bigint NOT NULL REFERENCES registry_collections (id) ON DELETE CASCADE,
    tag                     text NOT NULL CHECK (length(tag) BETWEEN 1 AND 256),
    created_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (registry_collection_id, tag)
);

-- An automation scoped to a whole entity ({"entity": "acme"}) is covered by `acme/*`.
-- Keep in sync with engine/keys.py (covers).
CREATE OR REPLACE FUNCTION api_scope_covers(patterns text[], scope jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT EXISTS (
    SELECT FROM unnest(patterns) AS p
    WHERE p = '*'
       OR p = scope ->> 'project'
       OR p = split_part(scope ->> 'project', '/', 1) || '/*'
       OR p = (scope ->> 'entity') || '/*'
       OR p = 'registry:' || (scope ->> 'registry')
       OR (p = 'registry:*' AND scope ->> 'registry' IS NOT NULL)
)
$$;
