-- API keys of `engine web` (engine/keys.py). The key itself is never stored: only its hash.

-- name: key_create
INSERT INTO api_keys (name, prefix, hash, role, scopes, created_at, expires_at)
VALUES (%(name)s, %(prefix)s, %(hash)s, %(role)s, %(scopes)s, %(now)s, %(expires_at)s)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, role, scopes, created_at, last_used_at, expires_at, revoked_at;

-- name: key_list
SELECT id, name, role, scopes, created_at, last_used_at, expires_at, revoked_at
FROM api_keys
ORDER BY name;

-- name: key_revoke
UPDATE api_keys SET revoked_at = %(now)s
WHERE name = %(name)s AND revoked_at IS NULL
RETURNING id;

-- name: key_exists
SELECT revoked_at FROM api_keys WHERE name = %(name)s;

-- name: key_by_prefix
-- The candidates for a presented key (the hash is compared in Python, in constant time).
SELECT id, name, role, scopes, created_at, last_used_at, expires_at, revoked_at, hash
FROM api_keys
WHERE prefix = %(prefix)s;

-- name: key_touch
-- Last use, written at most once a minute per key (whatever the number of processes).
UPDATE api_keys SET last_used_at = %(now)s
WHERE id = %(id)s AND (last_used_at IS NULL OR last_used_at < %(now)s - interval '1 minute');

-- name: key_by_id
-- The key a web console session stands for, read again on every request.
SELECT id, name, role, scopes, created_at, last_used_at, expires_at, revoked_at
FROM api_keys
WHERE id = %(id)s;
