-- The stop_run action (docs/actions.md): a request that a run's process stop.
--
-- * The request is a row written with its trigger, by the statement that inserts the triggers
--   (`insert_triggers`), so it exists exactly when the trigger does (the trigger's unique key
--   makes it exactly once, whatever the number of services). Its delivery row is written at
--   once as `succeeded` (the request is stored: nothing else is sent), `skipped` when the run
--   had already ended, or `silenced` under a silence (then no request is written).
-- * A request is pending until the run's state next changes (`transition_run` sets ended_at):
--   killed by it, finished meanwhile, or resumed later (a resumed run starts with none).
-- * The SDK reads the pending requests of the runs it flushes in the flush's transaction, and
--   `engine web`'s log route answers with them: the partial index holds the pending ones only,
--   so that lookup is a probe of a (usually empty) index.

ALTER TABLE deliveries DROP CONSTRAINT deliveries_action_type_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_action_type_check
    CHECK (action_type IN ('webhook', 'slack', 'email', 'discord', 'teams', 'pagerduty', 'no_op', 'stop_run'));

CREATE TABLE stop_requests (
    trigger_id    bigint PRIMARY KEY REFERENCES triggers (id) ON DELETE CASCADE,
    run_pk        bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    -- the automation's name as the run is told it (training nodes do not read automations)
    automation    text NOT NULL,
    requested_at  timestamptz NOT NULL,
    ended_at      timestamptz                      -- the run's next state change
);
CREATE INDEX stop_requests_pending ON stop_requests (run_pk) WHERE ended_at IS NULL;
