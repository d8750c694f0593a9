-- Dead letters (see migrations/postgres): verified deliveries that cannot be applied for a
-- reason a retry will not cure, once per svix-id. Times are UTC text, like received_at.
CREATE TABLE clerk_sync_dead_letters (
    svix_id    TEXT PRIMARY KEY NOT NULL,
    headers    TEXT NOT NULL,
    body       TEXT NOT NULL,
    reason     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    bytes      BIGINT NOT NULL,
    first_seen TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    attempts   INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX clerk_sync_dead_letters_first_seen_idx ON clerk_sync_dead_letters (first_seen, svix_id);

CREATE TABLE clerk_sync_dead_letter_drops (
    id            INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    dropped       BIGINT NOT NULL DEFAULT 0,
    dropped_bytes BIGINT NOT NULL DEFAULT 0
);
INSERT INTO clerk_sync_dead_letter_drops (id) VALUES (1);
