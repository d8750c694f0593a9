-- `clerk-sync backfill` checkpoints; columns mean what they mean on PostgreSQL
-- (see migrations/postgres).
CREATE TABLE clerk_sync_backfill_walks (
    walk_id       TEXT PRIMARY KEY NOT NULL,
    api_url       TEXT NOT NULL,
    started_ms    BIGINT NOT NULL,
    checkpoint_ms BIGINT NOT NULL,
    cursor        TEXT,
    pages         BIGINT NOT NULL DEFAULT 0,
    seen          BIGINT NOT NULL DEFAULT 0,
    applied       BIGINT NOT NULL DEFAULT 0,
    stale         BIGINT NOT NULL DEFAULT 0,
    unchanged     BIGINT NOT NULL DEFAULT 0,
    ignored       BIGINT NOT NULL DEFAULT 0,
    errors        BIGINT NOT NULL DEFAULT 0,
    completed_ms  BIGINT
);

CREATE TABLE clerk_sync_backfill_seen (
    walk_id  TEXT NOT NULL REFERENCES clerk_sync_backfill_walks (walk_id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (walk_id, user_id)
);
CREATE INDEX clerk_sync_backfill_seen_position_idx ON clerk_sync_backfill_seen (walk_id, position);
