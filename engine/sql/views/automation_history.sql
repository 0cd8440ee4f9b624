-- One row per trigger (SPEC section 4). Recreated by `engine db migrate` after the migrations.
-- Delivery columns describe the trigger's first action; `engine deliveries` shows them all.
-- An audit log: deleting an automation keeps its rows (automations.deleted_at).
DROP VIEW IF EXISTS automation_history;
CREATE VIEW automation_history AS
SELECT
    t.id                                   AS trigger_id,
    t.fired_at,
    a.name                                 AS automation,
    t.event_type,
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
    -- Added after the columns above (keep them first, in this order): when the automation
    -- was deleted, NULL while it exists. Its triggers stay here under the name it had; a
    -- later automation of the same name has its own rows, with NULL here.
    a.deleted_at                           AS automation_deleted_at
FROM triggers t
JOIN automations a ON a.id = t.automation_id
LEFT JOIN runs r ON r.id = t.run_pk
LEFT JOIN artifact_versions av ON av.id = t.artifact_version_id
LEFT JOIN artifact_collections ac ON ac.id = av.collection_id
LEFT JOIN projects p2 ON p2.id = ac.project_id
LEFT JOIN projects p ON p.id = coalesce(r.project_id, ac.project_id)
LEFT JOIN LATERAL (
    SELECT * FROM deliveries d WHERE d.trigger_id = t.id ORDER BY d.action_index LIMIT 1
) d ON true;
