-- Automation storage and management (engine/automations.py).

-- name: check_regex
-- Compiles a rule's regex exactly as evaluation will run it; SQLSTATE 2201B when invalid.
SELECT '' ~ %(pattern)s;

-- name: lock_automations
-- Serialises apply/enable/disable/delete, so two `rules apply` never race on one name.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: automation_for_update
-- Deleted automations are history only: every management query reads live ones
-- (deleted_at IS NULL), at most one per name (the partial unique index).
SELECT id, name, enabled, rule, rule_hash, condition_hash, version
FROM automations
WHERE name = %(name)s AND deleted_at IS NULL
FOR UPDATE;

-- name: automation_hash
-- What `apply --dry-run` compares (no lock: it writes nothing).
SELECT rule_hash FROM automations WHERE name = %(name)s AND deleted_at IS NULL;

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

-- name: delete_automations
-- Delete %(names)s, or with %(prune)s every live automation not in %(keep)s. A soft delete:
-- the row, its versions, triggers, deliveries and attempts stay (automation_history is an
-- audit log); disabled, so nothing evaluates it again, and without its evaluation state
-- (the evaluator locks that row while it evaluates: deleting it waits for a running tick,
-- and a later tick finds nothing to lock). Pending deliveries are still sent.
WITH gone AS (
    UPDATE automations SET deleted_at = %(now)s, enabled = false, updated_at = %(now)s
    WHERE deleted_at IS NULL
      AND CASE WHEN %(prune)s THEN NOT (name = ANY (%(keep)s)) ELSE name = ANY (%(names)s) END
    RETURNING id, name
), state AS (
    DELETE FROM automation_state s USING gone WHERE s.automation_id = gone.id
)
SELECT name FROM gone ORDER BY name;

-- name: pruned_automations
-- What `apply --prune --dry-run` would delete (see delete_automations).
SELECT name FROM automations
WHERE deleted_at IS NULL AND NOT (name = ANY (%(keep)s))
ORDER BY name;

-- name: automation_names
SELECT name FROM automations WHERE deleted_at IS NULL ORDER BY name;

-- name: deleted_automation
-- For a name not found: when an automation of that name was last deleted, if ever.
SELECT max(deleted_at) FROM automations WHERE name = %(name)s AND deleted_at IS NOT NULL;

-- name: list_automations
SELECT a.name,
       a.enabled,
       a.version,
       a.rule -> 'event' ->> 'type' AS rule_type,
       a.rule -> 'scope'            AS scope,
       a.updated_at,
       s.last_error,
       (SELECT count(*) FROM triggers t WHERE t.automation_id = a.id) AS triggers
FROM automations a
LEFT JOIN automation_state s ON s.automation_id = a.id
WHERE a.deleted_at IS NULL
  -- an API key sees the automations its scopes cover (NULL: everything)
  AND (%(scopes)s::text[] IS NULL OR api_scope_covers(%(scopes)s, a.rule -> 'scope'))
ORDER BY a.name;

-- name: get_automation
SELECT a.id, a.name, a.enabled, a.version, a.rule, a.source, a.created_at, a.updated_at, a.evaluate_from,
       s.frontier::text AS frontier, s.evaluated_at, s.last_error, s.last_error_at, s.failures,
       (SELECT count(*) FROM triggers t WHERE t.automation_id = a.id)      AS triggers,
       (SELECT max(t.fired_at) FROM triggers t WHERE t.automation_id = a.id) AS last_fired_at
FROM automations a
LEFT JOIN automation_state s ON s.automation_id = a.id
WHERE a.name = %(name)s AND a.deleted_at IS NULL;

-- name: enabled_automations
SELECT id, name, enabled, version, rule, source, created_at, updated_at, evaluate_from
FROM automations
WHERE enabled  -- a deleted automation is never enabled (automations_deleted_is_disabled)
ORDER BY id;

-- name: read_only_transaction
-- `apply --dry-run`: the database itself guarantees that nothing is written.
SET TRANSACTION READ ONLY;
