-- The outbox of actions (engine/actions/): deliveries, their attempts, template context.
-- Names start with `delivery_` so they cannot clash with other query files.

-- name: delivery_trigger_context
-- Everything a template variable may need about some triggers (the dispatcher reads those of
-- a whole claim at once). Artifact and registry facts come from the trigger's own columns
-- first, then from the event that caused it.
SELECT
    t.id                      AS trigger_id,
    t.fired_at,
    t.event_type              AS kind,
    t.metric,
    t.step,
    t.value,
    t.window_values,
    t.alias,
    t.tag,
    t.details,
    a.name                    AS automation_name,
    -- only for ${metric_filter}, which the evaluator records with the trigger (details) today
    CASE WHEN t.details ? 'metric_filter' THEN NULL ELSE a.rule END AS rule,
    r.run_id,
    r.name                    AS run_name,
    r.state                   AS run_state,
    r.user_name               AS run_user,
    p.entity,
    p.name                    AS project,
    e.author                  AS event_author,
    e.details                 AS event_details,
    av.id                     AS version_id,
    av.version_index,
    av.metadata,
    av.author                 AS version_author,
    ac.name                   AS collection_name,
    rg.name                   AS registry_name,
    rc.name                   AS registry_collection_name,
    rl.version_index          AS link_index,
    rl.author                 AS link_author
FROM triggers t
JOIN automations a ON a.id = t.automation_id
LEFT JOIN events e ON e.id = t.event_id
LEFT JOIN runs r ON r.id = coalesce(t.run_pk, e.run_pk)
LEFT JOIN artifact_versions av ON av.id = coalesce(t.artifact_version_id, e.version_id)
LEFT JOIN artifact_collections ac ON ac.id = coalesce(av.collection_id, e.collection_id)
LEFT JOIN projects p ON p.id = coalesce(ac.project_id, r.project_id, e.project_id)
LEFT JOIN registry_collections rc ON rc.id = e.registry_collection_id
LEFT JOIN registries rg ON rg.id = coalesce(e.registry_id, rc.registry_id)
LEFT JOIN registry_links rl ON rl.id = e.link_id
    OR (e.link_id IS NULL AND rl.registry_collection_id = rc.id AND rl.version_id = av.id)
WHERE t.id = ANY(%(trigger_ids)s::bigint[]);

-- name: delivery_claim_due
-- Take up to %(limit)s due deliveries: pending ones whose time has come, and 'sending' ones
-- whose lease expired (the service died between claim and record: they are sent again,
-- with the same id). While 'sending', next_attempt_at holds the lease's end, so one index
-- (deliveries_due) serves both. `attempts` is counted at claim time and is the claim's
-- fencing token: only the claimant that still holds it may record the outcome.
-- Due retries (pending after a failed attempt) come first, each as soon as its backoff is
-- over (deliveries_retry_due): otherwise a retry would also wait for every delivery that was
-- due before it, and with a backlog its backoff of 1 s would become the whole backlog's
-- length. The rest follow in the order they became due.
-- The lease covers the action's timeout for every redirect hop, plus a margin.
WITH retry AS (
    SELECT id, status AS was_status
    FROM deliveries
    WHERE status = 'pending' AND attempts > 0
      AND next_attempt_at <= %(now)s
      AND (%(only_id)s::uuid IS NULL OR id = %(only_id)s::uuid)
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), rest AS (
    SELECT id, status AS was_status
    FROM deliveries
    WHERE status IN ('pending', 'sending')
      AND next_attempt_at <= %(now)s
      AND (%(only_id)s::uuid IS NULL OR id = %(only_id)s::uuid)
      AND id NOT IN (SELECT id FROM retry)  -- locked by this statement already: not skipped
    ORDER BY next_attempt_at
    LIMIT %(limit)s - (SELECT count(*) FROM retry)
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT * FROM retry UNION ALL SELECT * FROM rest
)
UPDATE deliveries d SET
    status          = 'sending',
    attempts        = d.attempts + 1,
    claimed_until   = %(now)s + make_interval(secs => %(lease_margin)s
                          + %(lease_hops)s * coalesce((d.action ->> 'timeout')::float8, %(default_timeout)s)),
    next_attempt_at = %(now)s + make_interval(secs => %(lease_margin)s
                          + %(lease_hops)s * coalesce((d.action ->> 'timeout')::float8, %(default_timeout)s)),
    updated_at      = %(now)s
FROM due
WHERE d.id = due.id
RETURNING d.id, d.trigger_id, d.automation_id, d.action_type, d.action, d.action::text AS action_text,
          d.attempts, d.max_attempts, due.was_status, extract(epoch FROM d.claimed_until - %(now)s)::float8 AS lease_seconds;

-- name: delivery_renew_lease
-- A claimed delivery that waited for a worker longer than its lease can spare gets a whole
-- lease again (%(lease_seconds)s, as its claim gave it), only while its claim holds: returns
-- nothing when the lease was taken over meanwhile.
UPDATE deliveries SET
    claimed_until   = %(now)s + make_interval(secs => %(lease_seconds)s),
    next_attempt_at = %(now)s + make_interval(secs => %(lease_seconds)s),
    updated_at      = %(now)s
WHERE id = %(id)s AND status = 'sending' AND attempts = %(attempt)s
RETURNING id;

-- name: delivery_next_due
-- When the earliest waiting delivery (or lease) is due, or digest window closes, to sleep
-- exactly until then.
SELECT least((SELECT min(next_attempt_at) FROM deliveries WHERE status IN ('pending', 'sending')),
             (SELECT min(closes_at) FROM digests WHERE closed_at IS NULL));

-- name: delivery_record_outcomes
-- The outcomes of attempts, in one statement (the dispatcher records what its workers finished
-- together): every attempt row, and each delivery's new status, fenced: a claimant whose lease
-- expired and was taken over (attempts moved on) changes nothing here; its attempt row is
-- still kept. %(outcomes)s is a JSON array of objects with the columns below. Returns the
-- (delivery, attempt) whose status was written.
WITH o AS (
    SELECT * FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS o(
        id uuid, attempt integer, status text, started_at timestamptz, duration_ms double precision,
        http_status integer, response_body text, error text, last_error text, request jsonb,
        next_attempt_at timestamptz, finished_at timestamptz, updated_at timestamptz)
), attempt AS (
    INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status,
                                   response_body, error, request)
    SELECT id, attempt, started_at, duration_ms, http_status, response_body, error, request FROM o
    ON CONFLICT (delivery_id, attempt) DO NOTHING
)
UPDATE deliveries d SET
    status           = o.status,
    last_http_status = o.http_status,
    last_error       = o.last_error,
    next_attempt_at  = o.next_attempt_at,
    claimed_until    = NULL,
    finished_at      = o.finished_at,
    updated_at       = o.updated_at
FROM o
WHERE d.id = o.id AND d.status = 'sending' AND d.attempts = o.attempt
RETURNING d.id, d.attempts;

-- name: delivery_find
-- A delivery by full id or by a unique prefix of its text form (as `engine deliveries` shows it).
SELECT d.id, d.status, d.attempts, d.max_attempts, d.action_type, d.action, a.name AS automation,
       d.last_http_status, d.last_error, d.next_attempt_at
FROM deliveries d JOIN automations a ON a.id = d.automation_id
WHERE d.id::text LIKE %(prefix)s || '%%'
ORDER BY d.created_at
LIMIT 2;

-- name: delivery_redeliver
-- Send again: pending now, with a fresh budget of %(budget)s attempts on top of those made
-- (attempt numbers keep growing, so the log keeps every earlier attempt). Same id, so the
-- receiver can tell it is the same delivery.
UPDATE deliveries SET
    status = 'pending', max_attempts = attempts + %(budget)s, next_attempt_at = %(now)s,
    claimed_until = NULL, finished_at = NULL, updated_at = %(now)s
WHERE id = %(id)s AND status IN ('pending', 'succeeded', 'failed')
RETURNING id, status, attempts, max_attempts;

-- name: delivery_list
-- digest_count: the triggers a digest's delivery carries (NULL for any other delivery).
SELECT d.id, d.trigger_id, a.name AS automation, d.action_type, d.status, d.attempts, d.max_attempts,
       d.last_http_status, d.last_error, d.next_attempt_at, d.created_at, d.updated_at, d.finished_at,
       (SELECT count(*) FROM digests g JOIN digest_members m ON m.digest_id = g.id
        WHERE g.delivery_id = d.id HAVING count(*) > 0) AS digest_count
FROM deliveries d JOIN automations a ON a.id = d.automation_id
WHERE (%(status)s::text IS NULL OR d.status = %(status)s::text
       OR (%(status)s::text = 'pending' AND d.status = 'sending'))
  AND (%(automation)s::text IS NULL OR a.name = %(automation)s::text)
  -- an API key sees the deliveries of the automations its scopes cover (NULL: all)
  AND (%(scopes)s::text[] IS NULL OR api_scope_covers(%(scopes)s, a.rule -> 'scope'))
ORDER BY d.created_at DESC, d.action_index
LIMIT %(limit)s;

-- name: delivery_automation_rule
SELECT id, name, rule FROM automations WHERE name = %(name)s AND deleted_at IS NULL;
