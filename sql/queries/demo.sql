-- `engine demo` (engine/cli/demo.py). The demo_* writes stand in for the logging SDK until
-- it exists; the demo_show_* reads stay when the demo logs through the SDK.

-- name: demo_upsert_project
INSERT INTO projects (entity, name) VALUES (%(entity)s, %(project)s)
ON CONFLICT (entity, name) DO UPDATE SET entity = EXCLUDED.entity
RETURNING id;

-- name: demo_insert_run
INSERT INTO runs (project_id, run_id, name, user_name, config, state)
VALUES (%(project_id)s, %(run_id)s, %(name)s, %(user)s, %(config)s, 'running')
RETURNING id;

-- name: demo_finish_run
UPDATE runs SET state = 'finished', exit_code = 0, finished_at = now(), updated_at = now()
WHERE id = %(run_pk)s;

-- name: demo_insert_transition
-- A state change, and its event in the same transaction (creation is NULL -> running).
WITH t AS (
    INSERT INTO run_transitions (run_pk, from_state, to_state, exit_code, author)
    VALUES (%(run_pk)s, %(from_state)s, %(to_state)s, %(exit_code)s, %(author)s)
)
INSERT INTO events (type, author, project_id, run_pk, details)
VALUES ('run_state', %(author)s, %(project_id)s, %(run_pk)s,
        jsonb_build_object('from', %(from_state)s::text, 'to', %(to_state)s::text));

-- name: demo_metric_key
INSERT INTO metric_keys (key) VALUES (%(key)s)
ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
RETURNING id;

-- name: demo_insert_point
INSERT INTO metric_points (time, run_pk, key_id, step, seq, value)
VALUES (%(time)s, %(run_pk)s, %(key_id)s, %(step)s, %(seq)s, %(value)s);

-- name: demo_show_run
SELECT p.entity || '/' || p.name AS project, r.run_id, r.name, r.user_name, r.state, r.exit_code,
       r.config::text AS config, r.created_at, r.finished_at
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE r.id = %(run_pk)s;

-- name: demo_show_points
SELECT k.key, count(*) AS points, min(m.step) AS first_step, max(m.step) AS last_step,
       (array_agg(m.value ORDER BY m.seq DESC))[1] AS last_value
FROM metric_points m JOIN metric_keys k ON k.id = m.key_id
WHERE m.run_pk = %(run_pk)s
GROUP BY k.key
ORDER BY k.key;

-- name: demo_show_events
SELECT e.id, e.time, e.type, e.author, e.details::text AS details
FROM events e
WHERE e.run_pk = %(run_pk)s
ORDER BY e.id;
