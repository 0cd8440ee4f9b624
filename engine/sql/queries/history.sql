-- name: history
-- `engine history`: the automation_history view, newest first. A name matches the
-- automations that had it, deleted ones included.
SELECT trigger_id, fired_at, automation, event_type, entity, project, run_id, run_name, metric,
       value, step, alias, tag, artifact_version, action_type, delivery_status, attempts,
       last_http_status, last_error, automation_deleted_at, rule_type
FROM automation_history
WHERE (%(automation)s::text IS NULL OR automation = %(automation)s)
  AND (%(since)s::timestamptz IS NULL OR fired_at >= %(since)s)
ORDER BY fired_at DESC, trigger_id DESC
LIMIT %(limit)s;
