-- Dead letters: deliveries whose signature verified but which cannot be applied for a reason
-- a retry will not cure (a body that is not a usable event, a value the application's table
-- refuses for good). Kept once per svix-id, so that `clerk-sync replay --dead-letters` can
-- apply them after an upgrade or a schema fix, long after Svix stopped retrying.
CREATE TABLE clerk_sync.dead_letters (
    svix_id    TEXT PRIMARY KEY,
    -- The delivery's headers, a JSON array of [name, value] pairs (repeats kept).
    headers    TEXT NOT NULL,
    -- The raw body (verified, hence UTF-8).
    body       TEXT NOT NULL,
    -- Why it was kept: `invalid_event` or `refused`, then the error's text.
    reason     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    -- Bytes of headers and body, counted against the cap.
    bytes      BIGINT NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen  TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts   INTEGER NOT NULL DEFAULT 1
);
-- The cap drops the oldest first.
CREATE INDEX dead_letters_first_seen_idx ON clerk_sync.dead_letters (first_seen, svix_id);

-- Dead letters dropped to stay within the cap, shared by every instance. Its one row is also
-- what writers of dead letters lock (a row lock, for the transaction only) so that the cap
-- is counted on a consistent table.
CREATE TABLE clerk_sync.dead_letter_drops (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    dropped       BIGINT NOT NULL DEFAULT 0,
    dropped_bytes BIGINT NOT NULL DEFAULT 0
);
INSERT INTO clerk_sync.dead_letter_drops (id) VALUES (1);
