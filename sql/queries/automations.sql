-- Rule storage and management (engine/rules/store.py).

-- name: check_regex
-- Compiles a rule's regex exactly as evaluation will run it; SQLSTATE 2201B when invalid.
SELECT '' ~ %(pattern)s;

-- name: lock_automations
-- Serialises apply/enable/disable/delete, so two `rules apply` never race on one name.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: automation_for_update
SELECT id, name, enabled, rule, rule_hash, condition_hash, version
FROM automations
WHERE name = %(name)s
FOR UPDATE;

-- name: insert_automation
INSERT INTO automations (name, enabled, rule, rule_hash, condition_hash, version, source,
                         created_at, updated_at, evaluate_from)
VALUES (%(name)s, %(enabled)s, %(rule)s, %(rule_hash)s, %(condition_hash)s, 1, %(source)s,
        %(now)s, %(now)s, %(now)s)
RETURNING id;

-- name: insert_automation_version
INSERT INTO automation_versions (automation_id, version, rule, enabled, created_at)
VALUES (%(id)s, %(version)s, %(rule)s, %(enabled)s, %(now)s);

-- name: insert_automation_state
-- The evaluator reads values and events written by transactions with xid >= frontier:
-- whatever was logged before this point never fires the automation.
-- Keep in sync with restart_automation_state.
INSERT INTO automation_state (automation_id, frontier)
VALUES (%(id)s, pg_snapshot_xmax(pg_current_snapshot()));

-- name: update_automation
-- %(restart)s: the condition changed, or the automation was just enabled.
UPDATE automations SET
    enabled        = %(enabled)s,
    rule           = %(rule)s,
    rule_hash      = %(rule_hash)s,
    condition_hash = %(condition_hash)s,
    version        = version + 1,
    source         = coalesce(%(source)s, source),
    updated_at     = %(now)s,
    evaluate_from  = CASE WHEN %(restart)s THEN %(now)s ELSE evaluate_from END
WHERE id = %(id)s
RETURNING version;

-- name: restart_automation_state
-- Evaluation starts again from now (see insert_automation_state); the old error is moot.
UPDATE automation_state SET
    frontier      = pg_snapshot_xmax(pg_current_snapshot()),
    last_error    = NULL,
    last_error_at = NULL,
    failures      = 0
WHERE automation_id = %(id)s;

-- name: delete_automation
DELETE FROM automations WHERE name = %(name)s RETURNING id;

-- name: prune_automations
DELETE FROM automations WHERE NOT (name = ANY (%(keep)s)) RETURNING name;

-- name: automation_names
SELECT name FROM automations ORDER BY name;

-- name: list_automations
SELECT a.name,
       a.enabled,
       a.version,
       a.rule -> 'event' ->> 'type' AS event_type,
       a.rule -> 'scope'            AS scope,
       a.updated_at,
       s.last_error,
       (SELECT count(*) FROM triggers t WHERE t.automation_id = a.id) AS triggers
FROM automations a
LEFT JOIN automation_state s ON s.automation_id = a.id
ORDER BY a.name;

-- name: get_automation
SELECT a.id, a.name, a.enabled, a.version, a.rule, a.source, a.created_at, a.updated_at, a.evaluate_from,
       s.frontier::text AS frontier, s.evaluated_at, s.last_error, s.last_error_at, s.failures,
       (SELECT count(*) FROM triggers t WHERE t.automation_id = a.id)      AS triggers,
       (SELECT max(t.fired_at) FROM triggers t WHERE t.automation_id = a.id) AS last_fired_at
FROM automations a
LEFT JOIN automation_state s ON s.automation_id = a.id
WHERE a.name = %(name)s;

-- name: enabled_automations
SELECT id, name, enabled, version, rule, source, created_at, updated_at, evaluate_from
FROM automations
WHERE enabled
ORDER BY id;
