-- One row per trigger. Recreated by `engine db migrate` after the migrations.
-- Delivery columns describe the trigger's first action; `engine deliveries` shows them all.
-- delivery_status: pending | succeeded | failed | skipped | suppressed | silenced.
-- An audit log: deleting an automation keeps its rows (automations.deleted_at).
-- event_type is the W&B name, as `${event_type}` in an action (RUN_METRIC, LINK_ARTIFACT, ...);
-- rule_type is the rule's `event.type` (run_metric_threshold, ...), as stored in triggers.event_type.
DROP VIEW IF EXISTS automation_history;

-- The W&B name of a rule's event type. The rule package defines these names (each event
-- class's `wandb_name`); tests/integration/test_history_vocabulary.py keeps this copy equal.
CREATE OR REPLACE FUNCTION wandb_event_type(rule_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE rule_type
    WHEN 'run_metric_threshold' THEN 'RUN_METRIC'
    WHEN 'run_metric_change' THEN 'RUN_METRIC_CHANGE'
    WHEN 'run_metric_zscore' THEN 'RUN_METRIC_ZSCORE'
    WHEN 'run_metric_nonfinite' THEN 'RUN_METRIC_NONFINITE'
    WHEN 'run_state' THEN 'RUN_STATE'
    WHEN 'run_stalled' THEN 'RUN_STALLED'
    WHEN 'artifact_version_created' THEN 'CREATE_ARTIFACT'
    WHEN 'artifact_alias_added' THEN 'ADD_ARTIFACT_ALIAS'
    WHEN 'artifact_tag_added' THEN 'ADD_ARTIFACT_TAG'
    WHEN 'registry_version_linked' THEN 'LINK_ARTIFACT'
    WHEN 'run_alert' THEN 'RUN_ALERT'
    WHEN 'artifact_tag_removed' THEN 'REMOVE_ARTIFACT_TAG'
    WHEN 'artifact_unlinked' THEN 'UNLINK_ARTIFACT'
    WHEN 'collection_tag_added' THEN 'ADD_COLLECTION_TAG'
    WHEN 'collection_tag_removed' THEN 'REMOVE_COLLECTION_TAG'
    ELSE upper(rule_type)
END
$$;

CREATE VIEW automation_history AS
SELECT
    t.id                                   AS trigger_id,
    t.fired_at,
    a.name                                 AS automation,
    wandb_event_type(t.event_type)         AS event_type,
    p.entity,
    p.name                                 AS project,
    r.run_id,
    r.name                                 AS run_name,
    t.metric,
    t.value,
    t.step,
    t.alias,
    t.tag,
    CASE WHEN av.id IS NOT NULL THEN p2.entity || '/' || p2.name || '/' || ac.name || ':v' || av.version_index END
                                           AS artifact_version,
    d.action_type,
    CASE WHEN d.status = 'sending' THEN 'pending' ELSE coalesce(d.status, 'pending') END
                                           AS delivery_status,
    coalesce(d.attempts, 0)                AS attempts,
    d.last_http_status,
    d.last_error,
    -- Added after the columns above (keep them first, in this order; new ones go last).
    -- automation_deleted_at: when the automation was deleted, NULL while it exists. Its
    -- triggers stay here under the name it had; a later automation of the same name has its
    -- own rows, with NULL here.
    a.deleted_at                           AS automation_deleted_at,
    t.event_type                           AS rule_type,
    -- the keys the history filters by automation and by run: their indexes (triggers_automation_fired,
    -- triggers_run_fired) find a quiet automation's or a run's triggers among millions
    t.automation_id,
    t.run_pk
FROM triggers t
JOIN automations a ON a.id = t.automation_id
LEFT JOIN runs r ON r.id = t.run_pk
LEFT JOIN artifact_versions av ON av.id = t.artifact_version_id
LEFT JOIN artifact_collections ac ON ac.id = av.collection_id
LEFT JOIN projects p2 ON p2.id = ac.project_id
-- a collection's own event (its tags) has no version: its project is the event's
LEFT JOIN events ev ON ev.id = t.event_id AND t.run_pk IS NULL AND av.id IS NULL
LEFT JOIN projects p ON p.id = coalesce(r.project_id, ac.project_id, ev.project_id)
-- A trigger's delivery for an action is its own, or, for a digested action, the one of the
-- digest it joined (pending while the window is open).
LEFT JOIN LATERAL (
    SELECT x.* FROM (
        SELECT d.action_index, d.action_type, d.status, d.attempts, d.last_http_status, d.last_error
        FROM deliveries d
        WHERE d.trigger_id = t.id
          AND NOT EXISTS (SELECT 1 FROM digest_members m JOIN digests g ON g.id = m.digest_id
                          WHERE m.trigger_id = t.id AND g.action_index = d.action_index)
        UNION ALL
        SELECT g.action_index, g.action_type, coalesce(d.status, 'pending'), coalesce(d.attempts, 0),
               d.last_http_status, d.last_error
        FROM digest_members m
        JOIN digests g ON g.id = m.digest_id
        LEFT JOIN deliveries d ON d.id = g.delivery_id
        WHERE m.trigger_id = t.id
    ) x
    ORDER BY x.action_index LIMIT 1
) d ON true;
