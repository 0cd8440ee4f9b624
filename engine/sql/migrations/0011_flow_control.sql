-- Control over how much is sent: digests, rate limits and silences (docs/actions.md).
--
-- * A delivery may now be `suppressed` (its action's rate limit was reached) or `silenced`
--   (a silence covered its trigger). Both are final when inserted: never claimed, never sent.
-- * A digest is a window of an action (automation, action_index): the first trigger opens it,
--   later ones join it (digest_members) until it closes; closing creates ONE delivery for all
--   of them. The window and its members are rows, and closing is a claim (closed_at, set once
--   under the action's gate), so a restart never loses nor repeats a digest.
-- * action_gates: one row per (automation, action) with a digest or a rate limit. Whoever
--   counts its deliveries or touches its windows locks the row first (in a statement of its
--   own, so that the counting statement's snapshot comes after the lock): the check and the
--   insert it allows are serialised across services.

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'sending', 'succeeded', 'failed', 'skipped', 'suppressed', 'silenced'));

-- The rate limit counts an action's deliveries over a rolling period.
CREATE INDEX deliveries_action_created ON deliveries (automation_id, action_index, created_at);

CREATE TABLE action_gates (
    automation_id  bigint NOT NULL REFERENCES automations (id) ON DELETE RESTRICT,
    action_index   integer NOT NULL,
    PRIMARY KEY (automation_id, action_index)
);

CREATE TABLE digests (
    id                bigserial PRIMARY KEY,
    automation_id     bigint NOT NULL REFERENCES automations (id) ON DELETE RESTRICT,
    action_index      integer NOT NULL,
    action_type       text NOT NULL,
    action            jsonb NOT NULL,             -- the action as it was when the window opened
    max_attempts      integer NOT NULL,
    rate_count        integer,                    -- the action's rate limit, applied at closing
    rate_per_seconds  double precision,
    rate_text         text,
    opened_at         timestamptz NOT NULL,
    closes_at         timestamptz NOT NULL,
    first_trigger_id  bigint NOT NULL REFERENCES triggers (id) ON DELETE RESTRICT,
    closed_at         timestamptz,                -- set once, by the claim that closes it
    delivery_id       uuid UNIQUE REFERENCES deliveries (id) ON DELETE RESTRICT,
    CHECK (closes_at > opened_at),
    CHECK ((closed_at IS NULL) = (delivery_id IS NULL))
);
-- The windows still open (what the evaluator joins and the closer claims).
CREATE INDEX digests_open ON digests (closes_at) WHERE closed_at IS NULL;
CREATE INDEX digests_action_open ON digests (automation_id, action_index) WHERE closed_at IS NULL;

CREATE TABLE digest_members (
    digest_id   bigint NOT NULL REFERENCES digests (id) ON DELETE RESTRICT,
    trigger_id  bigint NOT NULL REFERENCES triggers (id) ON DELETE RESTRICT,
    PRIMARY KEY (digest_id, trigger_id)
);
CREATE INDEX digest_members_trigger ON digest_members (trigger_id);

-- Silences: while one is active (starts_at <= t < ends_at), the triggers of its automation or
-- project are recorded with their deliveries `silenced`. A project is kept by its names, so a
-- project that has no run yet can be silenced before a sweep starts.
CREATE TABLE silences (
    id             bigserial PRIMARY KEY,
    automation_id  bigint REFERENCES automations (id) ON DELETE RESTRICT,
    entity         entity_part,
    project        entity_part,
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz NOT NULL,
    reason         text NOT NULL CHECK (length(btrim(reason)) BETWEEN 1 AND 1000),
    created_by     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,                   -- ended early (`engine silence end`)
    ended_by       text,
    CHECK ((automation_id IS NULL) <> (entity IS NULL)),
    CHECK ((entity IS NULL) = (project IS NULL)),
    CHECK (ends_at >= starts_at)
);
CREATE INDEX silences_ends ON silences (ends_at);

-- Which silence silenced a delivery (engine deliveries, engine silence list).
ALTER TABLE deliveries ADD COLUMN silence_id bigint REFERENCES silences (id) ON DELETE RESTRICT;
