-- `clerk-sync backfill`: the walk over Clerk's Backend API, checkpointed after every page
-- so that an interrupted backfill resumes where it stopped.

-- One row per walk. The newest row without `completed_at` is the walk a new run resumes.
-- Times are ms since the epoch, read from the database's clock (the clock that stamps
-- clerk_sync.deliveries.received_at), so that the prune cut-off compares like with like.
CREATE TABLE clerk_sync.backfill_walks (
    walk_id       TEXT PRIMARY KEY,
    api_url       TEXT NOT NULL,
    started_ms    BIGINT NOT NULL,
    checkpoint_ms BIGINT NOT NULL,
    -- The id of the last user of the last applied page: the next page starts after it.
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

-- Every user id a walk saw, in walk order: what `--prune` keeps, and the cursors a walk
-- steps back to when the user it would start after was deleted meanwhile.
CREATE TABLE clerk_sync.backfill_seen (
    walk_id  TEXT NOT NULL REFERENCES clerk_sync.backfill_walks (walk_id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (walk_id, user_id)
);
CREATE INDEX backfill_seen_position_idx ON clerk_sync.backfill_seen (walk_id, position);
