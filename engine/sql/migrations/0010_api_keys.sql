-- `engine web`: API keys, and the log batches the HTTP API stored.
--
-- api_keys: only the sha256 of a key is stored (never the key). `prefix` is the key's first
-- characters, stored to find its row; the hash is then compared in constant time. A revoked
-- key keeps its row (and its name): `engine keys list` shows it, and the name is not reused.
CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._-]{1,128}$'),
    prefix       text NOT NULL,
    hash         text NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$'),
    role         text NOT NULL CHECK (role IN ('ingest', 'read', 'admin')),
    scopes       text[] NOT NULL CHECK (cardinality(scopes) > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_prefix ON api_keys (prefix);

-- A log batch of the HTTP API, stored in the transaction that stores its points: a client
-- retrying a batch whose answer it lost finds it here and nothing is stored twice.
CREATE TABLE ingest_batches (
    run_pk    bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    batch_id  text NOT NULL CHECK (length(batch_id) BETWEEN 1 AND 128),
    points    integer NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_pk, batch_id)
);

-- Whether an API key's scope patterns cover an automation's scope (its `scope` JSON:
-- {"project": "entity/project"} or {"registry": "NAME"}). Patterns: `*`, `entity/project`,
-- `entity/*`, `registry:NAME`, `registry:*`. Keep in sync with engine/keys.py (covers);
-- tests/unit/test_api_keys.py checks that both agree.
CREATE FUNCTION api_scope_covers(patterns text[], scope jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT EXISTS (
    SELECT FROM unnest(patterns) AS p
    WHERE p = '*'
       OR p = scope ->> 'project'
       OR p = split_part(scope ->> 'project', '/', 1) || '/*'
       OR p = 'registry:' || (scope ->> 'registry')
       OR (p = 'registry:*' AND scope ->> 'registry' IS NOT NULL)
)
$$;
