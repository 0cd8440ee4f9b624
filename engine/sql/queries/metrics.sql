-- Operational metrics read at each Prometheus scrape (engine/prometheus.py). Each is an
-- index-only count or a min over a small set; the scrape never writes.

-- name: metrics_scrape_timeout
-- A scrape must never hang on a busy database; local: the pooled connection keeps no setting.
SELECT set_config('statement_timeout', %(timeout_ms)s, true);

-- name: metrics_triggers_by_automation
-- Every trigger ever fired, by automation (exact across restarts and several services).
SELECT a.name AS automation, count(t.id) AS fired
FROM automations a
LEFT JOIN triggers t ON t.automation_id = a.id
GROUP BY a.name;

-- name: metrics_automations
SELECT count(*) FILTER (WHERE a.enabled) AS enabled,
       count(*) FILTER (WHERE a.enabled AND s.last_error IS NOT NULL) AS failing
FROM automations a
LEFT JOIN automation_state s ON s.automation_id = a.id;

-- name: metrics_deliveries_by_status
SELECT status, count(*) AS deliveries FROM deliveries GROUP BY status;

-- name: metrics_delivery_queue
-- The queue: deliveries not final yet. Age of the oldest, on the database's clock.
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_seconds
FROM deliveries
WHERE status IN ('pending', 'sending');
