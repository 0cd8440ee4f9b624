-- `engine demo` (engine/cli/demo.py): what the database holds for the sample run.

-- name: demo_show_run
SELECT p.entity || '/' || p.name AS project, r.run_id, r.name, r.user_name, r.state, r.exit_code,
       r.config::text AS config, r.created_at, r.finished_at
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE r.id = %(run_pk)s;

-- name: demo_show_points
-- Run metrics and system metrics side by side: the same shape, two hypertables.
SELECT 'metric_points' AS hypertable, k.key, count(*) AS points, min(m.step) AS first_step,
       max(m.step) AS last_step, (array_agg(m.value ORDER BY m.seq DESC))[1] AS last_value
FROM metric_points m JOIN metric_keys k ON k.id = m.key_id
WHERE m.run_pk = %(run_pk)s
GROUP BY k.key
UNION ALL
SELECT 'system_metrics', k.key, count(*), min(m.step), max(m.step), (array_agg(m.value ORDER BY m.seq DESC))[1]
FROM system_metrics m JOIN metric_keys k ON k.id = m.key_id
WHERE m.run_pk = %(run_pk)s
GROUP BY k.key
ORDER BY 1, 2;

-- name: demo_show_events
SELECT e.id, e.time, e.type, e.author, e.details::text AS details
FROM events e
WHERE e.run_pk = %(run_pk)s
ORDER BY e.id;
