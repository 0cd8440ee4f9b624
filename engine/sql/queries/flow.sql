-- How much is sent: action gates, digest windows and silences (engine/actions/flow.py,
-- engine/actions/silences.py). Names start with `flow_` or `silence_`.

-- name: flow_lock_gates
-- Lock the gates of these actions (creating them the first time), in one order, for the rest
-- of the transaction: the rate-limit count and the digest windows of an action are then read
-- and written by one transaction at a time, in whichever service. A statement of its own, so
-- that the next statement's snapshot is taken once the locks are held.
INSERT INTO action_gates (automation_id, action_index)
SELECT u.automation_id, u.action_index
FROM unnest(%(automation_ids)s::bigint[], %(action_indexes)s::integer[]) AS u(automation_id, action_index)
ORDER BY 1, 2
ON CONFLICT (automation_id, action_index) DO UPDATE SET action_index = EXCLUDED.action_index;

-- name: flow_claim_due_gates
-- The closing of digests is claimed like deliveries: the gates of actions with a window due
-- to close, locked; a gate another service holds (closing, or an evaluator adding a trigger)
-- is skipped this round.
SELECT g.automation_id, g.action_index
FROM action_gates g
WHERE (g.automation_id, g.action_index) IN (
    SELECT automation_id, action_index FROM digests WHERE closed_at IS NULL AND closes_at <= %(now)s)
ORDER BY g.automation_id, g.action_index
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: flow_close_digests
-- Close the due windows of the claimed actions (their gates are held): each gets ONE delivery,
-- pending (or suppressed when its action's rate limit is reached), whose trigger is the one
-- that opened the window, and closed_at is set in the same statement. Several windows of one
-- action (after an outage) are closed in order and counted against the limit in that order.
WITH due AS MATERIALIZED (
    SELECT g.id, g.automation_id, g.action_index, g.action_type, g.action, g.max_attempts, g.first_trigger_id,
           g.rate_count, g.rate_per_seconds, g.rate_text, gen_random_uuid() AS delivery_id,
           row_number() OVER (PARTITION BY g.automation_id, g.action_index ORDER BY g.closes_at, g.id) AS n
    FROM digests g
    WHERE g.closed_at IS NULL AND g.closes_at <= %(now)s
      AND (g.automation_id, g.action_index) IN (
          SELECT u.a, u.i FROM unnest(%(automation_ids)s::bigint[], %(action_indexes)s::integer[]) AS u(a, i))
), decided AS MATERIALIZED (
    SELECT d.*,
           CASE WHEN d.rate_count IS NOT NULL AND d.n + (
                    SELECT count(*) FROM deliveries x
                    WHERE x.automation_id = d.automation_id AND x.action_index = d.action_index
                      AND x.created_at > %(now)s::timestamptz - make_interval(secs => d.rate_per_seconds)
                      AND x.status NOT IN ('suppressed', 'silenced', 'skipped')) > d.rate_count
                THEN 'suppressed' ELSE 'pending' END AS status
    FROM due d
), queued AS (
    INSERT INTO deliveries (id, trigger_id, automation_id, action_index, action_type, action, status,
                            max_attempts, next_attempt_at, finished_at, created_at, last_error)
    SELECT d.delivery_id, d.first_trigger_id, d.automation_id, d.action_index, d.action_type, d.action, d.status,
           d.max_attempts, %(now)s, CASE WHEN d.status = 'suppressed' THEN %(now)s::timestamptz END, %(now)s,
           CASE WHEN d.status = 'suppressed' THEN 'rate limit reached (' || d.rate_text || ')' END
    FROM decided d
), closed AS (
    UPDATE digests g SET closed_at = %(now)s, delivery_id = d.delivery_id
    FROM decided d WHERE g.id = d.id
)
SELECT d.id AS digest_id, d.delivery_id, d.status,
       (SELECT count(*) FROM digest_members m WHERE m.digest_id = d.id) AS members
FROM decided d
ORDER BY d.id;

-- name: flow_next_close
-- When the earliest open window closes (the dispatcher sleeps no longer than that).
SELECT min(closes_at) FROM digests WHERE closed_at IS NULL;

-- name: flow_digest_members
-- The triggers each of these digest deliveries carries, in firing order.
SELECT g.delivery_id, array_agg(m.trigger_id ORDER BY m.trigger_id) AS trigger_ids
FROM digests g
JOIN digest_members m ON m.digest_id = g.id
WHERE g.delivery_id = ANY(%(delivery_ids)s::uuid[])
GROUP BY g.delivery_id;

-- name: silence_add
INSERT INTO silences (automation_id, entity, project, starts_at, ends_at, reason, created_by)
VALUES (%(automation_id)s, %(entity)s, %(project)s, %(starts_at)s, %(ends_at)s, %(reason)s, %(created_by)s)
RETURNING id;

-- name: silence_automation
SELECT id FROM automations WHERE name = %(name)s AND deleted_at IS NULL;

-- name: silence_list
-- Silences, the active ones first, with how many deliveries each has silenced so far; with
-- %(scopes)s (an API key's patterns) only those of the automations and projects they cover.
SELECT s.id, a.name AS automation, s.entity || '/' || s.project AS project, s.starts_at, s.ends_at, s.reason,
       s.created_by, s.created_at, s.ended_at, s.ended_by,
       (s.starts_at <= %(now)s AND s.ends_at > %(now)s) AS active,
       (SELECT count(*) FROM deliveries d WHERE d.silence_id = s.id) AS silenced
FROM silences s
LEFT JOIN automations a ON a.id = s.automation_id
WHERE (%(all)s OR s.ends_at > %(now)s)
  AND (%(scopes)s::text[] IS NULL OR api_scope_covers(%(scopes)s, coalesce(
        a.rule -> 'scope', jsonb_build_object('project', s.entity || '/' || s.project))))
ORDER BY (s.starts_at <= %(now)s AND s.ends_at > %(now)s) DESC, s.ends_at DESC, s.id DESC
LIMIT %(limit)s;

-- name: silence_end
-- End a silence now (kept, for the record). One that has already ended is left as it is.
UPDATE silences SET ends_at = greatest(starts_at, %(now)s), ended_at = %(now)s, ended_by = %(ended_by)s
WHERE id = %(id)s AND ends_at > %(now)s
RETURNING id, ends_at;

-- name: silence_get
SELECT s.id, s.ends_at, s.ended_at FROM silences s WHERE s.id = %(id)s;
