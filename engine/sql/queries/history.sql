-- name: history
-- `engine history`, GET /api/v1/history and the console: the automation_history view, newest first. An
-- automation's name is given as the ids of the automations that had it, deleted ones included,
-- and a run id as the runs' keys (history_automation_ids, history_run_pks): as constants the
-- planner reads a quiet automation's or a run's triggers by their own index, and pages a busy
-- one's along triggers_fired_id. The API also narrows it
-- to one project, to the rows after a page's last (fired_at, trigger_id) and to the
-- automations an API key's scopes cover; the console also to a run id and a delivery status.
-- NULL leaves each out. Newest first along triggers_fired_id (fired_at, id).
SELECT h.trigger_id, h.fired_at, h.automation, h.event_type, h.entity, h.project, h.run_id, h.run_name, h.metric,
       h.value, h.step, h.alias, h.tag, h.artifact_version, h.action_type, h.delivery_status, h.attempts,
       h.last_http_status, h.last_error, h.automation_deleted_at, h.rule_type
FROM automation_history h
-- filters: the same lines in history_newer (tests/unit/test_queries.py compares them)
WHERE (%(automation_ids)s::bigint[] IS NULL OR h.automation_id = ANY(%(automation_ids)s))
  AND (%(since)s::timestamptz IS NULL OR h.fired_at >= %(since)s)
  AND (%(project)s::text IS NULL OR h.entity || '/' || h.project = %(project)s)
  AND (%(run_pks)s::bigint[] IS NULL OR h.run_pk = ANY(%(run_pks)s))
  AND (%(status)s::text IS NULL OR h.delivery_status = %(status)s)
  -- a scalar subquery per row (by primary key), not EXISTS: the planner would turn that into
  -- a semi-join that reads every trigger before the first page's 50 rows
  AND (%(scopes)s::text[] IS NULL OR api_scope_covers(%(scopes)s, (
        SELECT a.rule -> 'scope' FROM triggers t JOIN automations a ON a.id = t.automation_id
        WHERE t.id = h.trigger_id)))
-- end of the filters
  AND (%(before_at)s::timestamptz IS NULL OR (h.fired_at, h.trigger_id) < (%(before_at)s, %(before_id)s::bigint))
ORDER BY h.fired_at DESC, h.trigger_id DESC
LIMIT %(limit)s;

-- name: history_newer
-- The console's "newer" link: the %(limit)s rows of `history` just newer than the row
-- (after_at, after_id), newest first: read oldest first along triggers_fired_id, then turned
-- round. A block of its own rather than a second order in `history`: the view is costly to
-- plan, and a statement holding it twice took twice as long to plan, for every page.
SELECT * FROM (
    SELECT h.trigger_id, h.fired_at, h.automation, h.event_type, h.entity, h.project, h.run_id, h.run_name,
           h.metric, h.value, h.step, h.alias, h.tag, h.artifact_version, h.action_type, h.delivery_status,
           h.attempts, h.last_http_status, h.last_error, h.automation_deleted_at, h.rule_type
    FROM automation_history h
-- filters: the same lines in history_newer (tests/unit/test_queries.py compares them)
WHERE (%(automation_ids)s::bigint[] IS NULL OR h.automation_id = ANY(%(automation_ids)s))
  AND (%(since)s::timestamptz IS NULL OR h.fired_at >= %(since)s)
  AND (%(project)s::text IS NULL OR h.entity || '/' || h.project = %(project)s)
  AND (%(run_pks)s::bigint[] IS NULL OR h.run_pk = ANY(%(run_pks)s))
  AND (%(status)s::text IS NULL OR h.delivery_status = %(status)s)
  -- a scalar subquery per row (by primary key), not EXISTS: the planner would turn that into
  -- a semi-join that reads every trigger before the first page's 50 rows
  AND (%(scopes)s::text[] IS NULL OR api_scope_covers(%(scopes)s, (
        SELECT a.rule -> 'scope' FROM triggers t JOIN automations a ON a.id = t.automation_id
        WHERE t.id = h.trigger_id)))
-- end of the filters
      AND (h.fired_at, h.trigger_id) > (%(after_at)s, %(after_id)s::bigint)
    ORDER BY h.fired_at, h.trigger_id
    LIMIT %(limit)s
) page
ORDER BY page.fired_at DESC, page.trigger_id DESC;

-- name: history_automation_ids
-- The automations that had this name (deleted ones too: their triggers keep it).
SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM automations WHERE name = %(automation)s;

-- name: history_run_pks
-- The runs with this run id (in this project, when one is given).
SELECT coalesce(array_agg(r.id ORDER BY r.id), '{}')
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE r.run_id = %(run_id)s AND (%(project)s::text IS NULL OR p.entity || '/' || p.name = %(project)s);
