-- Least-privilege roles of a team deployment: three group roles (NOLOGIN) that your login
-- roles join. Run this file as the role that ran `engine db migrate` (it owns the tables),
-- once, then again after every `engine db migrate` that adds tables. It is idempotent.
--   psql "$OWNER_URL" -v ON_ERROR_STOP=1 -f engine/sql/grants.sql
-- Creating the roles needs CREATEROLE; without it, have them created first (same names).
--
--   engine_service  `engine serve` (evaluation and deliveries), `engine rules apply|enable|
--                   disable|delete`, `engine redeliver`: reads everything, writes the
--                   automations, their state, triggers and deliveries; never the training data.
--   engine_ingest   training nodes (the SDK): adds runs, their state changes, points, system
--                   metrics, artifacts and registry links with their events. Reads the data
--                   tables only; DELETE only of tags and aliases (each removal writes its
--                   event), nothing of the automations.
--   engine_reader   analysts, dashboards, `engine history|deliveries|explain|rules list`: SELECT.

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['engine_service', 'engine_ingest', 'engine_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', name);
        END IF;
    END LOOP;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO engine_service, engine_ingest, engine_reader', current_database());
END $$;

GRANT USAGE ON SCHEMA public TO engine_service, engine_ingest, engine_reader;

-- engine_reader: everything, read-only (the automation_history view included).
GRANT SELECT ON ALL TABLES IN SCHEMA public TO engine_reader;

-- engine_service
GRANT SELECT ON ALL TABLES IN SCHEMA public TO engine_service;
GRANT INSERT, UPDATE ON automations TO engine_service;  -- deleting one marks it deleted: its history stays
GRANT INSERT ON automation_versions TO engine_service;
GRANT INSERT, UPDATE, DELETE ON automation_state TO engine_service;
GRANT INSERT ON triggers, delivery_attempts TO engine_service;
GRANT INSERT, UPDATE ON deliveries TO engine_service;
GRANT DELETE ON series_batches TO engine_service;  -- watermark rows every automation has passed
-- digests, rate limits and silences (`engine silence add|end` runs as the service's role)
GRANT INSERT, UPDATE ON action_gates, digests, silences TO engine_service;
GRANT INSERT ON digest_members TO engine_service;
GRANT INSERT ON stop_requests TO engine_service;  -- the stop_run action, written with its trigger
GRANT USAGE ON SEQUENCE digests_id_seq, silences_id_seq TO engine_service;
GRANT USAGE ON SEQUENCE automations_id_seq, triggers_id_seq, delivery_attempts_id_seq TO engine_service;

-- engine_ingest. UPDATE only where the SDK upserts or changes a row: the run (its state), a
-- series' tail, an alias that moves; the name columns make `INSERT ... ON CONFLICT DO UPDATE`
-- return an existing row's id (and let the SDK lock a collection while it numbers versions).
GRANT SELECT ON schema_migrations, projects, runs, run_transitions, metric_keys, metric_points, system_metrics,
    series_state, events, artifact_collections, artifact_versions, artifact_aliases, artifact_tags, registries,
    registry_collections, registry_links, registry_aliases TO engine_ingest;
GRANT INSERT ON projects, runs, run_transitions, metric_keys, metric_points, system_metrics, series_state,
    series_batches, events, artifact_collections, artifact_versions, artifact_aliases, artifact_tags, registries,
    registry_collections, registry_links, registry_aliases TO engine_ingest;
GRANT UPDATE ON runs, series_state TO engine_ingest;
GRANT INSERT ON nonfinite_points, run_metric_gaps TO engine_ingest;  -- a flush's NaN values; pauses
GRANT UPDATE (entity) ON projects TO engine_ingest;
GRANT UPDATE (name) ON artifact_collections, registries, registry_collections TO engine_ingest;
GRANT UPDATE (version_id, updated_at) ON artifact_aliases TO engine_ingest;
GRANT UPDATE (link_id, updated_at) ON registry_aliases TO engine_ingest;
-- tag removal, unlinking (the link is marked, its aliases go) and collection tags
GRANT SELECT, INSERT, DELETE ON artifact_collection_tags, registry_collection_tags TO engine_ingest;
GRANT DELETE ON artifact_tags, artifact_aliases, registry_aliases TO engine_ingest;
GRANT UPDATE (unlinked_at) ON registry_links TO engine_ingest;
-- stop_run: a flush reads its runs' pending stop requests; a run's state change ends them
GRANT SELECT, UPDATE (ended_at) ON stop_requests TO engine_ingest;
GRANT USAGE ON SEQUENCE ingest_batch_seq, projects_id_seq, runs_id_seq, run_transitions_id_seq, metric_keys_id_seq,
    series_batches_id_seq, events_id_seq, artifact_collections_id_seq, artifact_versions_id_seq, registries_id_seq,
    registry_collections_id_seq, registry_links_id_seq TO engine_ingest;
