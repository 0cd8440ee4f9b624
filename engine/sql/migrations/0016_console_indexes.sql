-- The web console pages its lists by keyset and counts firings per automation and per run.
--   history (newest first, any filter): triggers by (fired_at, id), the keyset's own order,
--   which replaces the index on fired_at alone;
--   an automation's history, its last firing and its firings per day;
--   a run's triggers (the run page, the history filtered by run);
--   pending or failed deliveries, newest first, by (created_at, id).
DROP INDEX IF EXISTS triggers_fired_at;
CREATE INDEX triggers_fired_id ON triggers (fired_at DESC, id DESC);
CREATE INDEX triggers_automation_fired ON triggers (automation_id, fired_at DESC, id DESC);
CREATE INDEX triggers_run_fired ON triggers (run_pk, fired_at DESC) WHERE run_pk IS NOT NULL;
CREATE INDEX deliveries_status_created ON deliveries (status, created_at DESC, id DESC);
