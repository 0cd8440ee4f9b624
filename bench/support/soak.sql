-- Queries of the kill soak (bench/support/soak.py), loaded with bench_query(name, "soak.sql").

-- name: soak_triggers
SELECT a.name, t.cause FROM triggers t JOIN automations a ON a.id = t.automation_id;

-- name: soak_webhook_deliveries
SELECT id, status FROM deliveries WHERE action_type = 'webhook';

-- name: soak_most_deliveries_per_trigger
-- 1 when every trigger has one delivery (the soak's automations have one action each)
SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM deliveries GROUP BY trigger_id) x;

-- name: soak_in_flight
SELECT count(*) FROM deliveries WHERE status = 'sending';

-- name: soak_last_write
-- When the last trigger, or the last delivery outcome, was written.
SELECT greatest((SELECT max(fired_at) FROM triggers), (SELECT max(finished_at) FROM deliveries));
