-- `engine doctor` (engine/doctor.py): read-only questions about the installation.

-- name: doctor_server
-- shared_preload_libraries is readable only by superusers and pg_read_all_settings (NULL otherwise).
SELECT current_setting('server_version') AS server_version,
       pg_has_role('pg_read_all_settings', 'USAGE') AS may_read_settings,
       CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE') THEN current_setting('shared_preload_libraries') END AS preload,
       (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb,
       (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb') AS available;

-- name: doctor_timescaledb_loads
-- A call into TimescaleDB's library, which refuses to run unless it was preloaded (for a role
-- that may not read shared_preload_libraries).
SELECT _timescaledb_functions.get_git_commit();

-- name: doctor_automations
-- Every stored automation with its evaluation state (the evaluator records failures here).
SELECT a.name, a.enabled, a.rule, s.last_error, s.last_error_at, s.failures, s.evaluated_at
FROM automations a
LEFT JOIN automation_state s ON s.automation_id = a.id
WHERE a.deleted_at IS NULL
ORDER BY a.name;

-- name: doctor_failed_deliveries
-- Deliveries that ended `failed` since %(since)s, by automation, with the latest error.
SELECT a.name AS automation,
       count(*) AS failed,
       (array_agg(d.last_error ORDER BY d.updated_at DESC))[1] AS last_error
FROM deliveries d
JOIN automations a ON a.id = d.automation_id
WHERE d.status = 'failed' AND d.updated_at >= %(since)s
GROUP BY a.name
ORDER BY failed DESC, a.name;
