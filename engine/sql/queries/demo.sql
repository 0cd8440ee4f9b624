-- `engine demo` (engine/cli/demo.py). Every query is limited to the demo's automations
-- (%(names)s) and to triggers newer than the ones that existed when it started (%(after)s),
-- so a second demo shows its own story.

-- name: demo_last_trigger
SELECT coalesce(max(id), 0) FROM triggers;

-- name: demo_other_enabled
-- Enabled automations that are not the demo's: its evaluation service evaluates them too.
SELECT name FROM automations WHERE enabled AND NOT (name = ANY(%(names)s)) ORDER BY name;

-- name: demo_progress
-- Per demo automation: triggers fired, and their deliveries by state (one action per rule).
SELECT a.name,
       count(DISTINCT t.id)                                          AS fired,
       count(d.id) FILTER (WHERE d.status IN ('pending', 'sending')) AS in_flight,
       count(d.id) FILTER (WHERE d.status = 'succeeded')             AS succeeded,
       count(d.id) FILTER (WHERE d.status = 'failed')                AS failed,
       count(d.id) FILTER (WHERE d.status = 'skipped')               AS skipped
FROM automations a
LEFT JOIN triggers t ON t.automation_id = a.id AND t.id > %(after)s
LEFT JOIN deliveries d ON d.trigger_id = t.id
WHERE a.name = ANY(%(names)s)
GROUP BY a.name;

-- name: demo_history
-- The view's columns, plus the condition in words and the state change from the trigger's details.
SELECT h.trigger_id, h.fired_at, h.automation, h.rule_type, h.run_name, h.metric, h.value, h.step,
       coalesce(h.alias, h.tag, '') AS alias_or_tag, h.artifact_version, h.delivery_status, h.last_error,
       t.details->>'metric_filter' AS condition, t.details->>'from' AS from_state, t.details->>'to' AS to_state,
       t.details->>'registry' || '/' || (t.details->>'collection') || ':v' || (t.details->>'version_index') AS linked_as
FROM automation_history h
JOIN triggers t ON t.id = h.trigger_id
WHERE h.automation = ANY(%(names)s) AND h.trigger_id > %(after)s
ORDER BY h.trigger_id;

-- name: demo_delivery_owners
-- X-Automation-Delivery (what the receiver saw) -> trigger and automation.
SELECT d.id::text, d.trigger_id, a.name
FROM deliveries d JOIN automations a ON a.id = d.automation_id
WHERE d.trigger_id > %(after)s AND a.name = ANY(%(names)s);

-- name: demo_cpu_peak
-- The highest system/cpu the demo's runs sampled (for an honest note when cpu rules stay silent).
SELECT max(m.value)
FROM system_metrics m
JOIN metric_keys k ON k.id = m.key_id
JOIN runs r ON r.id = m.run_pk
JOIN projects p ON p.id = r.project_id
WHERE k.key = 'system/cpu' AND p.entity = %(entity)s AND p.name = %(project)s;
