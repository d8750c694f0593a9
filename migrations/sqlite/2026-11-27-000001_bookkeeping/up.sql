-- clerk-sync's own bookkeeping; on SQLite its tables carry the `clerk_sync_`
-- prefix. Columns mean what they mean on PostgreSQL (see migrations/postgres).
CREATE TABLE clerk_sync_deliveries (
    svix_id     TEXT PRIMARY KEY NOT NULL,
    event_type  TEXT NOT NULL,
    user_id     TEXT,
    outcome     TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX clerk_sync_deliveries_received_at_idx ON clerk_sync_deliveries (received_at);

CREATE TABLE clerk_sync_users (
    user_id        TEXT PRIMARY KEY NOT NULL,
    version        BIGINT NOT NULL,
    digest         TEXT NOT NULL,
    email          TEXT,
    deleted_at     TEXT,
    delete_pending BOOLEAN NOT NULL DEFAULT 0,
    delete_attempted_at TEXT,
    role_from_webhook BOOLEAN NOT NULL DEFAULT 0
);
CREATE INDEX clerk_sync_users_email_idx ON clerk_sync_users (email) WHERE email IS NOT NULL;
CREATE INDEX clerk_sync_users_delete_pending_idx ON clerk_sync_users (delete_attempted_at) WHERE delete_pending;
