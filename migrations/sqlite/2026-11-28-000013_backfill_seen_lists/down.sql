CREATE TABLE clerk_sync_backfill_seen_rows (
    walk_id  TEXT NOT NULL REFERENCES clerk_sync_backfill_walks (walk_id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (walk_id, user_id)
);
INSERT OR IGNORE INTO clerk_sync_backfill_seen_rows (walk_id, user_id, position)
SELECT s.walk_id, j.value, (s.page + 1) * 1000 + j.key
  FROM clerk_sync_backfill_seen s, json_each(s.user_ids) j
 WHERE s.walk_id IN (SELECT walk_id FROM clerk_sync_backfill_walks);
DROP TABLE clerk_sync_backfill_seen;
ALTER TABLE clerk_sync_backfill_seen_rows RENAME TO clerk_sync_backfill_seen;
CREATE INDEX clerk_sync_backfill_seen_position_idx ON clerk_sync_backfill_seen (walk_id, position);
