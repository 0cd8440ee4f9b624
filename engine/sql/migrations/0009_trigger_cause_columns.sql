-- Why a metric trigger fired, as columns that `engine explain` (and any query) reads as they
-- are, instead of taking the position apart from the `cause` text and the windows and the
-- comparison from the rule. `cause` stays the exactly-once key. Event triggers leave them NULL.
--
-- * key_id, pos: the series (with run_pk) and the finite value that fired, numbered 1..n in
--   logging order: 'metric:<run_pk>:<key_id>:<pos>' in `cause`.
-- * window_size: the threshold window, or the current window (both end at pos);
--   prior_window_size: change rules, the window just before the current one.
-- * aggregation, and what was compared: threshold rules `<aggregate> <operator> <threshold>`;
--   change rules d (the trigger's `value`) computed as `change`, tested in `direction`
--   against `amount`.
ALTER TABLE triggers
    ADD COLUMN key_id            integer,
    ADD COLUMN pos               bigint,
    ADD COLUMN window_size       integer,
    ADD COLUMN prior_window_size integer,
    ADD COLUMN aggregation       text,
    ADD COLUMN operator          text,
    ADD COLUMN threshold         double precision,
    ADD COLUMN change            text,
    ADD COLUMN direction         text,
    ADD COLUMN amount            double precision;

-- Triggers written before: the cause text taken apart once, here; the window sizes are the
-- recorded windows' lengths (a rule fires on full windows only); what was compared comes from
-- the rule at the trigger's version (stored with every field, defaults included). A value of
-- an unexpected JSON type is left NULL rather than failing the migration.
WITH old AS (
    SELECT t.id, coalesce(v.rule, a.rule) -> 'event' AS event
    FROM triggers t
    JOIN automations a ON a.id = t.automation_id
    LEFT JOIN automation_versions v ON v.automation_id = t.automation_id AND v.version = t.automation_version
    WHERE t.cause ~ '^metric:[0-9]+:[0-9]+:[0-9]+$'
)
UPDATE triggers t
SET key_id = split_part(t.cause, ':', 3)::integer,
    pos = split_part(t.cause, ':', 4)::bigint,
    window_size = cardinality(t.window_values),
    prior_window_size = CASE WHEN t.event_type = 'run_metric_change' THEN cardinality(t.prior_values) END,
    aggregation = CASE WHEN jsonb_typeof(o.event -> 'aggregation') = 'string' THEN o.event ->> 'aggregation' END,
    operator = CASE WHEN jsonb_typeof(o.event -> 'operator') = 'string' THEN o.event ->> 'operator' END,
    threshold = CASE WHEN jsonb_typeof(o.event -> 'threshold') = 'number' THEN (o.event ->> 'threshold')::double precision END,
    change = CASE WHEN jsonb_typeof(o.event -> 'change') = 'string' THEN o.event ->> 'change' END,
    direction = CASE WHEN jsonb_typeof(o.event -> 'direction') = 'string' THEN o.event ->> 'direction' END,
    amount = CASE WHEN jsonb_typeof(o.event -> 'amount') = 'number' THEN (o.event ->> 'amount')::double precision END
FROM old o
WHERE o.id = t.id;
