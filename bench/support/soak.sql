-- Queries of the kill soak (bench/support/soak.py), loaded with bench_query(name, "soak.sql").

-- name: soak_triggers
-- Each trigger with how many deliveries it has (a digest's belongs to the trigger that opened
-- the window) and how many digest windows it is a member of.
SELECT t.id, a.name, t.cause, coalesce(d.n, 0) AS deliveries, coalesce(m.n, 0) AS windows
FROM triggers t
JOIN automations a ON a.id = t.automation_id
LEFT JOIN (SELECT trigger_id, count(*) AS n FROM deliveries GROUP BY trigger_id) d ON d.trigger_id = t.id
LEFT JOIN (SELECT trigger_id, count(*) AS n FROM digest_members GROUP BY trigger_id) m ON m.trigger_id = t.id;

-- name: soak_webhook_deliveries
SELECT d.id, d.status, a.name, d.created_at
FROM deliveries d JOIN automations a ON a.id = d.automation_id
WHERE d.action_type = 'webhook';

-- name: soak_digests
-- Each digest window: closed or not, its delivery (once closed), its members.
SELECT g.id, g.closed_at IS NOT NULL AS closed, g.delivery_id,
       array_agg(m.trigger_id ORDER BY m.trigger_id) AS members
FROM digests g JOIN digest_members m ON m.digest_id = g.id
GROUP BY g.id
ORDER BY g.id;

-- name: soak_open_windows
SELECT count(*) FROM digests WHERE closed_at IS NULL;

-- name: soak_in_flight
SELECT count(*) FROM deliveries WHERE status = 'sending';

-- name: soak_last_write
-- When the last trigger, or the last delivery outcome, was written.
SELECT greatest((SELECT max(fired_at) FROM triggers), (SELECT max(finished_at) FROM deliveries));
