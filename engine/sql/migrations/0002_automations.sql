-- Automations, their evaluation progress, and what they fired (issues 3 and 4).

CREATE TABLE automations (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9 ._-]{1,128}$'),
    enabled         boolean NOT NULL DEFAULT true,
    rule            jsonb NOT NULL,               -- the validated rule (secrets only as {"env": NAME})
    rule_hash       text NOT NULL,                -- detects "unchanged" on apply
    condition_hash  text NOT NULL,                -- a change here restarts evaluation
    version         integer NOT NULL DEFAULT 1,   -- increases on every change
    source          text,                         -- file it was applied from, if any
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    evaluate_from   timestamptz NOT NULL DEFAULT now()  -- created, last enabled or condition changed
);

-- Every version an automation has had: updating a rule never loses its history.
CREATE TABLE automation_versions (
    automation_id  bigint NOT NULL REFERENCES automations (id) ON DELETE CASCADE,
    version        integer NOT NULL,
    rule           jsonb NOT NULL,
    enabled        boolean NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (automation_id, version)
);

-- Progress of each automation, kept apart from `automations` so that `rules apply` never
-- waits for a tick. Values and events written by transactions with xid >= frontier are
-- still to be evaluated; the frontier moves in the same transaction as the triggers.
CREATE TABLE automation_state (
    automation_id  bigint PRIMARY KEY REFERENCES automations (id) ON DELETE CASCADE,
    frontier       xid8 NOT NULL,
    evaluated_at   timestamptz,
    last_error     text,
    last_error_at  timestamptz,
    failures       integer NOT NULL DEFAULT 0
);

CREATE TABLE triggers (
    id                  bigserial PRIMARY KEY,
    fired_at            timestamptz NOT NULL DEFAULT now(),
    automation_id       bigint NOT NULL REFERENCES automations (id) ON DELETE CASCADE,
    automation_version  integer NOT NULL,
    event_type          text NOT NULL,            -- the rule's event kind, e.g. run_metric_threshold
    -- what caused it: 'metric:<run_pk>:<key_id>:<pos>' or 'event:<event id>'
    cause               text NOT NULL,
    run_pk              bigint REFERENCES runs (id) ON DELETE SET NULL,
    event_id            bigint REFERENCES events (id) ON DELETE SET NULL,
    metric              text,
    step                bigint,
    value_time          timestamptz,              -- the value's own timestamp (cooldown clock)
    value               double precision,         -- the aggregate, or the change d
    window_values       double precision[],       -- threshold window, or the current window
    prior_values        double precision[],       -- change rules: the prior window
    current_aggregate   double precision,
    prior_aggregate     double precision,
    alias               text,
    tag                 text,
    artifact_version_id bigint REFERENCES artifact_versions (id) ON DELETE SET NULL,
    details             jsonb NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (automation_id, cause)               -- a duplicate firing is impossible
);
CREATE INDEX triggers_fired_at ON triggers (fired_at DESC);
CREATE INDEX triggers_cooldown ON triggers (automation_id, run_pk, value_time DESC) WHERE run_pk IS NOT NULL;

-- The outbox: one delivery per action of a trigger, created in the trigger's transaction.
CREATE TABLE deliveries (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),  -- sent as X-Automation-Delivery
    trigger_id        bigint NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    automation_id     bigint NOT NULL REFERENCES automations (id) ON DELETE CASCADE,
    action_index      integer NOT NULL DEFAULT 0,
    action_type       text NOT NULL CHECK (action_type IN ('webhook', 'slack', 'no_op')),
    action            jsonb NOT NULL,             -- the action as in the rule: secrets are {"env": NAME}
    status            text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sending', 'succeeded', 'failed', 'skipped')),
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 5,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    claimed_until     timestamptz,                -- a lease: an expired claim is taken again
    last_http_status  integer,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    UNIQUE (trigger_id, action_index)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'sending');
CREATE INDEX deliveries_status ON deliveries (status, updated_at DESC);

CREATE TABLE delivery_attempts (
    id             bigserial PRIMARY KEY,
    delivery_id    uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt        integer NOT NULL,
    started_at     timestamptz NOT NULL,
    duration_ms    double precision,
    http_status    integer,
    response_body  text,                          -- truncated
    error          text,
    request        jsonb,                         -- url and headers, secrets redacted
    UNIQUE (delivery_id, attempt)
);
