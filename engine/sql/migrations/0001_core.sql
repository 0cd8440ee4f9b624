-- Core data model (SPEC section 1): projects, runs, metrics, artifacts, registries, events.
-- Every change the SDK makes writes an `events` row in the same transaction.

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE DOMAIN entity_part AS text CHECK (VALUE ~ '^[A-Za-z0-9._-]{1,128}$');

CREATE TABLE projects (
    id          bigserial PRIMARY KEY,
    entity      entity_part NOT NULL,
    name        entity_part NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (entity, name)
);

CREATE TABLE runs (
    id           bigserial PRIMARY KEY,          -- internal key ("run_pk" elsewhere)
    project_id   bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    run_id       text NOT NULL CHECK (length(run_id) BETWEEN 1 AND 128),
    name         text NOT NULL,
    user_name    text,
    config       jsonb NOT NULL DEFAULT '{}'::jsonb,
    tags         text[] NOT NULL DEFAULT '{}',
    state        text NOT NULL CHECK (state IN ('running', 'finished', 'failed', 'killed')),
    exit_code    integer,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    UNIQUE (project_id, run_id)
);
CREATE INDEX runs_project_created ON runs (project_id, created_at DESC);

-- One row per state change; creation is a transition from NULL into 'running'.
CREATE TABLE run_transitions (
    id          bigserial PRIMARY KEY,
    run_pk      bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    from_state  text,
    to_state    text NOT NULL,
    exit_code   integer,
    author      text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_transitions_run ON run_transitions (run_pk, at);

-- Metric names are interned: points carry a small integer instead of the string.
CREATE TABLE metric_keys (
    id   serial PRIMARY KEY,
    key  text NOT NULL UNIQUE CHECK (length(key) BETWEEN 1 AND 256 AND key !~ '[[:cntrl:]]')
);

-- Run metrics. `seq` is the ingest order ((batch id << 20) | ordinal), which orders one
-- run's values exactly as they were logged (steps never decrease within a run).
CREATE TABLE metric_points (
    time    timestamptz NOT NULL,
    run_pk  bigint NOT NULL,
    key_id  integer NOT NULL,
    step    bigint NOT NULL,
    seq     bigint NOT NULL,
    value   double precision NOT NULL
);
SELECT create_hypertable('metric_points', by_range('time', INTERVAL '7 days'));
-- "the values of one metric of one run, in logging order" (backtest, explain, fallback)
CREATE INDEX metric_points_series ON metric_points (run_pk, key_id, seq DESC);

-- System metrics sampled by the SDK; `step` is the sample's index in the run's sequence.
-- Same shape as metric_points on purpose: the compiler only swaps the table name.
CREATE TABLE system_metrics (
    time    timestamptz NOT NULL,
    run_pk  bigint NOT NULL,
    key_id  integer NOT NULL,
    step    bigint NOT NULL,
    seq     bigint NOT NULL,
    value   double precision NOT NULL
);
SELECT create_hypertable('system_metrics', by_range('time', INTERVAL '7 days'));
CREATE INDEX system_metrics_series ON system_metrics (run_pk, key_id, seq DESC);

-- Per-series state maintained by the ingest path, in the same transaction as the points:
-- the last few finite values of each (run, metric), so that live evaluation never has to
-- search the hypertable, whatever its size or number of chunks.
CREATE TABLE series_state (
    key_id      integer NOT NULL,
    run_pk      bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    n_finite    bigint NOT NULL,                 -- finite values the series has had so far
    tail_step   bigint[] NOT NULL,               -- last <= ENGINE_SERIES_TAIL finite values, oldest first
    tail_time   timestamptz[] NOT NULL,
    tail_value  double precision[] NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, run_pk)
);

-- The ingest watermark: one row per series touched by a flush, stamped with the writing
-- transaction's id. An evaluator reads the rows whose xid lies below the oldest running
-- transaction (pg_snapshot_xmin), so a batch that commits late is never skipped.
CREATE TABLE series_batches (
    id         bigserial PRIMARY KEY,
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    key_id     integer NOT NULL,
    run_pk     bigint NOT NULL,
    first_pos  bigint NOT NULL,                  -- positions among the series' finite values
    last_pos   bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX series_batches_key_xid ON series_batches (key_id, xid);
CREATE INDEX series_batches_xid ON series_batches (xid);

-- Artifacts ------------------------------------------------------------------------------

CREATE TABLE artifact_collections (
    id          bigserial PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 256),
    type        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

CREATE TABLE artifact_versions (
    id             bigserial PRIMARY KEY,
    collection_id  bigint NOT NULL REFERENCES artifact_collections (id) ON DELETE CASCADE,
    version_index  integer NOT NULL,
    digest         text NOT NULL,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    run_pk         bigint REFERENCES runs (id) ON DELETE SET NULL,
    author         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection_id, version_index)
);

-- At most one version of a collection holds an alias: the primary key makes adding it
-- elsewhere a move (INSERT ... ON CONFLICT DO UPDATE).
CREATE TABLE artifact_aliases (
    collection_id  bigint NOT NULL REFERENCES artifact_collections (id) ON DELETE CASCADE,
    alias          text NOT NULL CHECK (length(alias) BETWEEN 1 AND 256),
    version_id     bigint NOT NULL REFERENCES artifact_versions (id) ON DELETE CASCADE,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, alias)
);

CREATE TABLE artifact_tags (
    version_id  bigint NOT NULL REFERENCES artifact_versions (id) ON DELETE CASCADE,
    tag         text NOT NULL CHECK (length(tag) BETWEEN 1 AND 256),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version_id, tag)
);

CREATE TABLE registries (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._-]{1,128}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE registry_collections (
    id           bigserial PRIMARY KEY,
    registry_id  bigint NOT NULL REFERENCES registries (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 256),
    type         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (registry_id, name)
);

-- A version linked into a registry collection gets its own index there (v0, v1, ...).
CREATE TABLE registry_links (
    id                      bigserial PRIMARY KEY,
    registry_collection_id  bigint NOT NULL REFERENCES registry_collections (id) ON DELETE CASCADE,
    version_id              bigint NOT NULL REFERENCES artifact_versions (id) ON DELETE CASCADE,
    version_index           integer NOT NULL,
    author                  text,
    linked_at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (registry_collection_id, version_index),
    UNIQUE (registry_collection_id, version_id)
);

CREATE TABLE registry_aliases (
    registry_collection_id  bigint NOT NULL REFERENCES registry_collections (id) ON DELETE CASCADE,
    alias                   text NOT NULL CHECK (length(alias) BETWEEN 1 AND 256),
    link_id                 bigint NOT NULL REFERENCES registry_links (id) ON DELETE CASCADE,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (registry_collection_id, alias)
);

-- Events: append-only, written in the same transaction as the change they describe.
-- `type` uses the rule language's event names; a run's creation is a `run_state` event
-- from NULL to 'running'. `xid` is the evaluators' watermark (see series_batches).
CREATE TABLE events (
    id                      bigserial PRIMARY KEY,
    xid                     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    time                    timestamptz NOT NULL DEFAULT now(),
    type                    text NOT NULL CHECK (type IN (
                                'run_state', 'artifact_version_created', 'artifact_alias_added',
                                'artifact_tag_added', 'registry_version_linked')),
    author                  text,
    project_id              bigint REFERENCES projects (id) ON DELETE CASCADE,
    run_pk                  bigint REFERENCES runs (id) ON DELETE CASCADE,
    collection_id           bigint REFERENCES artifact_collections (id) ON DELETE CASCADE,
    version_id              bigint REFERENCES artifact_versions (id) ON DELETE CASCADE,
    registry_id             bigint REFERENCES registries (id) ON DELETE CASCADE,
    registry_collection_id  bigint REFERENCES registry_collections (id) ON DELETE CASCADE,
    link_id                 bigint REFERENCES registry_links (id) ON DELETE CASCADE,
    details                 jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX events_xid ON events (xid);
CREATE INDEX events_time ON events (time DESC);

CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only' USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
