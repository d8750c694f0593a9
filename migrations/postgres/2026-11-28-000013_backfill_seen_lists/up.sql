-- A walk's seen user ids as one row per checkpoint (the ids of its pages, in walk order)
-- instead of one row per user: a checkpoint of 2,000 users wrote 2,000 rows and 4,000 index
-- entries, about 12 µs per user of a backfill's database time. The prune reads the ids
-- as a set and the step-back reads the newest rows only, so neither needs a row per id.
CREATE TABLE clerk_sync.backfill_seen_lists (
    walk_id  TEXT NOT NULL,
    -- The walk's pages before this checkpoint's (the checkpoints' order).
    page     BIGINT NOT NULL,
    user_ids TEXT[] NOT NULL,
    PRIMARY KEY (walk_id, page)
);
-- An unfinished walk keeps what it saw: positions were 1,000 per page from (page + 1) × 1,000.
INSERT INTO clerk_sync.backfill_seen_lists (walk_id, page, user_ids)
SELECT walk_id, position / 1000 - 1, array_agg(user_id ORDER BY position)
  FROM clerk_sync.backfill_seen
 GROUP BY walk_id, position / 1000;
DROP TABLE clerk_sync.backfill_seen;
ALTER TABLE clerk_sync.backfill_seen_lists RENAME TO backfill_seen;
ALTER TABLE clerk_sync.backfill_seen RENAME CONSTRAINT backfill_seen_lists_pkey TO backfill_seen_pkey;
