-- The web console (engine/web/console/): what its pages read beyond the queries the API
-- shares with it. Every list takes an API key's scopes (api_scope_covers, as the API's).

-- name: console_automations
-- The automations page: each covered automation with when it last fired, its firings per day
-- over %(days)s days from %(start)s, and whether it is failing (evaluation errors, or
-- deliveries that failed in those days). Reads triggers_automation_fired.
SELECT a.name, a.enabled, a.version, a.rule -> 'event' ->> 'type' AS rule_type, a.rule -> 'scope' AS scope,
       s.last_error, s.last_error_at, coalesce(s.failures, 0) AS failures,
       (SELECT max(t.fired_at) FROM triggers t WHERE t.automation_id = a.id) AS last_fired_at,
       ARRAY(SELECT (SELECT count(*) FROM triggers t
                     WHERE t.automation_id = a.id AND t.fired_at >= g.day AND t.fired_at < g.day + interval '1 day')
             FROM generate_series(%(start)s::timestamptz,
                                  %(start)s::timestamptz + (%(days)s - 1) * interval '1 day',
                                  interval '1 day') AS g(day)
             ORDER BY g.day) AS daily,
       (SELECT count(*) FROM deliveries d
        WHERE d.automation_id = a.id AND d.status = 'failed' AND d.created_at >= %(start)s) AS failed_deliveries
FROM automations a
LEFT JOIN automation_state s ON s.automation_id = a.id
WHERE a.deleted_at IS NULL
  AND (%(scopes)s::text[] IS NULL OR api_scope_covers(%(scopes)s, a.rule -> 'scope'))
ORDER BY a.name;

-- name: console_automation_versions
SELECT v.version, v.enabled, v.created_at, v.rule
FROM automation_versions v JOIN automations a ON a.id = v.automation_id
WHERE a.name = %(name)s AND a.deleted_at IS NULL
ORDER BY v.version DESC;

-- name: console_trigger_rule
-- The rule as it was when the trigger fired (its version), and the automation's current name.
SELECT coalesce(v.rule, a.rule) AS rule, t.automation_version, a.name, a.deleted_at
FROM triggers t
JOIN automations a ON a.id = t.automation_id
LEFT JOIN automation_versions v ON v.automation_id = t.automation_id AND v.version = t.automation_version
WHERE t.id = %(trigger_id)s;

-- name: console_trigger_deliveries
SELECT d.id, d.action_index, d.action_type, d.status, d.attempts, d.max_attempts, d.last_http_status,
       d.last_error, d.next_attempt_at, d.created_at, d.finished_at
FROM deliveries d
WHERE d.trigger_id = %(trigger_id)s
ORDER BY d.action_index;

-- name: console_delivery_attempts
-- Every attempt of the given deliveries; the response cut to an excerpt.
SELECT a.delivery_id, a.attempt, a.started_at, a.duration_ms, a.http_status, left(a.response_body, 500) AS response,
       a.error
FROM delivery_attempts a
WHERE a.delivery_id = ANY(%(ids)s::uuid[])
ORDER BY a.delivery_id, a.attempt;

-- name: console_deliveries
-- The deliveries page: pending (and sending) or failed ones of the covered automations,
-- newest first, paged by (created_at, id) (deliveries_status_created). With %(after_at)s (the
-- "newer" link) the %(limit)s rows just newer than that row, read oldest first, turned round.
WITH d AS NOT MATERIALIZED (  -- inlined into both branches below, each with its own order
    SELECT d.id, d.trigger_id, a.name AS automation, d.action_type, d.status, d.attempts, d.max_attempts,
           d.last_http_status, d.last_error, d.next_attempt_at, d.created_at
    FROM deliveries d JOIN automations a ON a.id = d.automation_id
    WHERE d.status = ANY(%(statuses)s::text[])
      AND (%(automation)s::text IS NULL OR a.name = %(automation)s::text)
      AND (%(scopes)s::text[] IS NULL OR api_scope_covers(%(scopes)s, a.rule -> 'scope'))
)
SELECT * FROM (
    (SELECT * FROM d
     WHERE %(after_at)s::timestamptz IS NULL
       AND (%(before_at)s::timestamptz IS NULL OR (d.created_at, d.id) < (%(before_at)s, %(before_id)s::uuid))
     ORDER BY d.created_at DESC, d.id DESC
     LIMIT %(limit)s)
    UNION ALL
    (SELECT * FROM d
     WHERE %(after_at)s::timestamptz IS NOT NULL AND (d.created_at, d.id) > (%(after_at)s, %(after_id)s::uuid)
     ORDER BY d.created_at, d.id
     LIMIT %(limit)s)
) page
ORDER BY page.created_at DESC, page.id DESC;

-- name: console_project_runs
-- The runs of a project, newest first, with how many triggers each fired.
SELECT r.id AS pk, r.run_id, r.name, r.user_name, r.state, r.created_at, r.finished_at,
       (SELECT count(*) FROM triggers t WHERE t.run_pk = r.id) AS triggers
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE p.entity = %(entity)s AND p.name = %(project)s
ORDER BY r.created_at DESC, r.id DESC
LIMIT %(limit)s;

-- name: console_run_last_values
-- The last finite value of every metric of the given runs (series_state's tail).
SELECT s.run_pk, k.key, s.tail_value[array_upper(s.tail_value, 1)] AS value,
       s.tail_step[array_upper(s.tail_step, 1)] AS step, s.key_id
FROM series_state s JOIN metric_keys k ON k.id = s.key_id
WHERE s.run_pk = ANY(%(run_pks)s::bigint[])
ORDER BY s.run_pk, k.key;

-- name: console_run
SELECT r.id AS pk, r.run_id, r.name, r.user_name, r.state, r.exit_code, r.created_at, r.finished_at,
       r.config, r.tags
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE p.entity = %(entity)s AND p.name = %(project)s AND r.run_id = %(run_id)s;

-- name: console_run_triggers
-- The triggers of one run of the covered automations (their metric, step and value mark the charts).
SELECT t.id, t.fired_at, a.name AS automation, t.event_type, t.metric, t.step, t.value
FROM triggers t JOIN automations a ON a.id = t.automation_id
WHERE t.run_pk = %(run_pk)s
  AND (%(scopes)s::text[] IS NULL OR api_scope_covers(%(scopes)s, a.rule -> 'scope'))
ORDER BY t.fired_at DESC, t.id DESC
LIMIT 500;
