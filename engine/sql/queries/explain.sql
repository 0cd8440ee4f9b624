-- `engine explain TRIGGER_ID` (engine/explain/data.py): why a rule fired.

-- name: explain_trigger
-- The trigger with its cause as columns, the rule as it was at the trigger's version
-- (automation_versions keeps them all: its scope and run filter), and the labels the
-- automation_history view already computes (run, project, artifact version, first delivery).
SELECT t.id, t.fired_at, t.automation_id, a.name AS automation, t.automation_version,
       coalesce(v.rule, a.rule) AS rule, t.event_type, t.run_pk, t.event_id, t.metric,
       t.step, t.value_time, t.value, t.window_values, t.prior_values, t.current_aggregate,
       t.prior_aggregate, t.alias, t.tag, t.details,
       t.key_id, t.pos, t.window_size, t.prior_window_size, t.aggregation, t.operator, t.threshold,
       t.change, t.direction, t.amount,
       h.entity, h.project, h.run_id, h.run_name, r.user_name, r.state AS run_state,
       h.artifact_version, h.action_type, h.delivery_status, h.attempts, h.last_http_status
FROM triggers t
JOIN automations a ON a.id = t.automation_id
JOIN automation_history h ON h.trigger_id = t.id
LEFT JOIN automation_versions v ON v.automation_id = t.automation_id AND v.version = t.automation_version
LEFT JOIN runs r ON r.id = t.run_pk
WHERE t.id = %(trigger_id)s;

-- name: explain_series
-- One metric of one run: its finite values in logging order, numbered exactly as ingest and
-- the evaluator number them (the <pos> of a trigger's cause): see finite_series().
SELECT f.pos, f.step, f.time, f.value FROM finite_series(%(run_pk)s, %(key_id)s, %(system)s) AS f;

-- name: explain_event
-- The event behind an event trigger.
SELECT e.id, e.type, e.time, e.author, e.details
FROM events e
WHERE e.id = %(event_id)s;
