-- `engine web` (engine/web/): what its authorisation and its log route need beyond the
-- queries the CLI and the SDK share with it.

-- name: web_automation_scope
SELECT rule -> 'scope' FROM automations WHERE name = %(name)s AND deleted_at IS NULL;

-- name: web_delivery_scope
SELECT a.rule -> 'scope' FROM deliveries d JOIN automations a ON a.id = d.automation_id WHERE d.id = %(id)s;

-- name: web_trigger_scope
SELECT a.rule -> 'scope' FROM triggers t JOIN automations a ON a.id = t.automation_id WHERE t.id = %(id)s;

-- name: web_silence_scope
-- Where a silence acts: its automation's scope, or its project.
SELECT coalesce(a.rule -> 'scope', jsonb_build_object('project', s.entity || '/' || s.project))
FROM silences s LEFT JOIN automations a ON a.id = s.automation_id WHERE s.id = %(id)s;

-- name: web_run
-- A run by its path, with where its steps stand (for the log route) and its state.
SELECT r.id, r.state, p.id AS project_id
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE p.entity = %(entity)s AND p.name = %(project)s AND r.run_id = %(run_id)s;

-- name: web_run_names
SELECT name, user_name FROM runs WHERE id = %(run_pk)s;

-- name: web_run_state
SELECT state FROM runs WHERE id = %(run_pk)s;

-- name: ingest_lock
-- One log batch of a run at a time (whatever the number of `engine web` processes), so that
-- its steps are numbered and its batch id checked against what is stored: the run, by its
-- path, locked until the batch's transaction ends (no row, no lock: no such run). The two-key
-- form has a key space of its own (the engine's other advisory locks use the one-key form).
-- Waited for at most `wait` (lock_timeout, this statement only: set before, reset after it
-- in the same pipeline): a client whose request the server still works on may send the batch
-- again, and its retry must not hold a connection for as long as the first attempt.
SELECT pg_advisory_xact_lock(1768842087, mod(r.id, 2147483647)::int)
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE p.entity = %(entity)s AND p.name = %(project)s AND r.run_id = %(run_id)s;

-- name: lock_wait
SELECT set_config('lock_timeout', %(wait)s, false);

-- name: ingest_run_state
-- Run under the run's lock (a statement after ingest_lock's, so that it sees what the lock's
-- previous holder committed): the run, where its steps stand, the points of the batch if it
-- was stored before (else NULL), and its oldest pending stop request (stop_run), if any.
SELECT r.id, r.state, r.step, r.system_step,
       (SELECT points FROM ingest_batches WHERE run_pk = r.id AND batch_id = %(batch_id)s),
       (SELECT automation FROM stop_requests WHERE run_pk = r.id AND ended_at IS NULL ORDER BY trigger_id LIMIT 1)
FROM runs r JOIN projects p ON p.id = r.project_id
WHERE p.entity = %(entity)s AND p.name = %(project)s AND r.run_id = %(run_id)s;

-- name: ingest_batch_insert
-- Runs in the transaction that stores the batch's points (the writer's closing statement).
INSERT INTO ingest_batches (run_pk, batch_id, points) VALUES (%(run_pk)s, %(batch_id)s, %(points)s)
RETURNING batch_id;

-- name: ingest_batch_end
-- A run's last batch, in its transaction: the batch id (as ingest_batch_insert) and the
-- run's end (as transition_run: its state before, or no row when it was not running).
WITH batch AS (
    INSERT INTO ingest_batches (run_pk, batch_id, points) VALUES (%(run_pk)s, %(batch_id)s, %(points)s)
)
SELECT transition_run AS from_state
FROM transition_run(%(run_pk)s::bigint, %(from_states)s::text[], %(to_state)s::text, %(exit_code)s::integer,
                    %(author)s::text, %(at)s::timestamptz, %(stopped_by)s::text);
