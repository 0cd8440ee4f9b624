-- What a connection asks about itself when it opens (engine/db.py).

-- name: server_backend_pid
-- The server process answering: a pooler between client and server (PgBouncer) gave the
-- client a backend pid of its own at startup, which this one is not.
SELECT pg_backend_pid();
