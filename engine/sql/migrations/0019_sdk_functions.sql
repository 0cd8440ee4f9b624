-- The SDK's statements that run for every run or every flush, as PL/pgSQL functions: a run's
-- creation, a run's state change, and the runs' bookkeeping of every flush after its COPY. Sent by
-- the client, each statement was parsed and planned again every time (the SDK uses no
-- prepared statements, so that it works through PgBouncer in transaction mode), and planning
-- these multi-table statements cost about as much as running them. A function keeps each of
-- its statements' plans for the life of the server connection, which no pooler can break.
-- Generic plans (planned once, for any arguments): the statements find and join their rows
-- by primary key, which suits any number of series and runs. The statements are the ones the named queries of
-- engine/sql/queries/ held before; the named queries call these functions.

-- ingest_flush: each run's current steps and last ingestion (runs, run_metric_gaps), the
-- NOTIFY, and the runs' pending stop requests, for one flush, in this order. Run j of the
-- flush (p_runs[j]) has p_run_steps[j] and p_run_system_steps[j] as the highest metric step
-- and system sample of the flush (-1: none; a run with no metric value is not alive for
-- stalls). Returns the pending stop requests (stop_run) of the flush's runs, oldest first.
-- (The series' tails stay a statement of their own, upsert_series: a PL/pgSQL variable
-- holding the tails made taking each series' slice cost more the more series a flush has.)
CREATE FUNCTION ingest_flush(p_runs bigint[], p_run_steps bigint[], p_run_system_steps bigint[])
RETURNS TABLE (run_pk bigint, automation text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    -- each run keeps its current steps; a run with metric values had its last one now, on the
    -- database's clock, and a pause of at least a minute since the one before (or since the
    -- run's start) is recorded in run_metric_gaps, for stall rules' backtests
    WITH flushed AS (
        SELECT * FROM unnest(p_runs, p_run_steps, p_run_system_steps) AS f(id, step, system_step)
    ), before AS (
        SELECT r.id, coalesce(r.last_metric_at, r.created_at) AS since, f.step, f.system_step
        FROM runs AS r JOIN flushed AS f USING (id)
    ), stamped AS (
        UPDATE runs AS r
        SET step = greatest(r.step, b.step),
            system_step = greatest(r.system_step, b.system_step),
            last_metric_at = CASE WHEN b.step >= 0 THEN now() ELSE r.last_metric_at END
        FROM before AS b WHERE r.id = b.id
        RETURNING r.id, b.since, b.step >= 0 AS metric
    )
    INSERT INTO run_metric_gaps (run_pk, from_at, to_at)
    SELECT id, since, now() FROM stamped WHERE metric AND since <= now() - interval '1 minute'
    ON CONFLICT DO NOTHING;

    -- one NOTIFY per flush (NOTIFY takes a global lock at commit: never one per point)
    PERFORM pg_notify('engine_ingest', '');

    RETURN QUERY
    SELECT s.run_pk, s.automation FROM stop_requests AS s
    WHERE s.run_pk = ANY(p_runs) AND s.ended_at IS NULL
    ORDER BY s.trigger_id;
END
$$;

-- create_run: a new run is a transition from NULL into 'running' (so it has its event too):
-- project, run, transition and event in one statement. Returns nothing when the run id exists
-- already. The project's DO UPDATE (not DO NOTHING) makes RETURNING yield its id even under
-- concurrency.
CREATE FUNCTION create_run(
    p_entity text, p_project text, p_run_id text, p_name text, p_user text, p_config jsonb, p_tags text[],
    p_at timestamptz
) RETURNS TABLE (run_pk bigint, project_id bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH p AS (
        INSERT INTO projects (entity, name) VALUES (p_entity, p_project)
        ON CONFLICT (entity, name) DO UPDATE SET entity = EXCLUDED.entity
        RETURNING id
    ), r AS (
        INSERT INTO runs (project_id, run_id, name, user_name, config, tags, state, created_at, updated_at)
        SELECT p.id, p_run_id, p_name, p_user, p_config, p_tags, 'running', p_at, p_at FROM p
        ON CONFLICT (project_id, run_id) DO NOTHING
        RETURNING id, project_id
    ), tr AS (
        INSERT INTO run_transitions (run_pk, from_state, to_state, author, at)
        SELECT id, NULL, 'running', p_user, p_at FROM r
    )
    INSERT INTO events AS e (time, type, author, project_id, run_pk, details)
    SELECT p_at, 'run_state', p_user, r.project_id, r.id, jsonb_build_object('from', NULL, 'to', 'running')
    FROM r
    RETURNING e.run_pk, e.project_id;
END
$$;

-- transition_run: one state change, runs.state, a run_transitions row and a 'run_state' event,
-- only when the run is in one of p_from_states (returns nothing otherwise, and changes
-- nothing; else the state it left). It ends the run's pending stop requests (stop_run),
-- whatever the new state: a resumed run starts with none. p_stopped_by: the automation whose
-- stop request the run obeys (killed by stop_run; its event says so), else NULL.
CREATE FUNCTION transition_run(
    p_run_pk bigint, p_from_states text[], p_to_state text, p_exit_code integer, p_author text,
    p_at timestamptz, p_stopped_by text
) RETURNS SETOF text
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    WITH old AS (
        SELECT id, project_id, state FROM runs
        WHERE id = p_run_pk AND state = ANY(p_from_states)
        FOR UPDATE
    ), up AS (
        UPDATE runs r SET
            state       = p_to_state,
            exit_code   = p_exit_code,
            updated_at  = p_at,
            finished_at = CASE WHEN p_to_state = 'running' THEN NULL ELSE p_at END
        FROM old
        WHERE r.id = old.id
        RETURNING r.id, r.project_id, old.state AS from_state
    ), tr AS (
        INSERT INTO run_transitions (run_pk, from_state, to_state, exit_code, author, at)
        SELECT id, from_state, p_to_state, p_exit_code, p_author, p_at FROM up
    ), stops AS (
        UPDATE stop_requests s SET ended_at = p_at
        FROM up
        WHERE s.run_pk = up.id AND s.ended_at IS NULL
    )
    INSERT INTO events (time, type, author, project_id, run_pk, details)
    SELECT p_at, 'run_state', p_author, project_id, id,
           jsonb_build_object('from', from_state, 'to', p_to_state, 'exit_code', p_exit_code)
           || CASE WHEN p_stopped_by IS NULL THEN '{}'::jsonb
                   ELSE jsonb_build_object('stopped_by', p_stopped_by) END
    FROM up
    RETURNING details ->> 'from';
END
$$;
