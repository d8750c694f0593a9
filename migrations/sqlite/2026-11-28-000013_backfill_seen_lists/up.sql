-- A walk's seen user ids as one row per checkpoint, a JSON array in walk order (see
-- migrations/postgres). Seen ids are removed with their walk by clerk-sync itself.
CREATE TABLE clerk_sync_backfill_seen_lists (
    walk_id  TEXT NOT NULL,
    page     BIGINT NOT NULL,
    user_ids TEXT NOT NULL,
    PRIMARY KEY (walk_id, page)
);
INSERT INTO clerk_sync_backfill_seen_lists (walk_id, page, user_ids)
SELECT walk_id, position / 1000 - 1, json_group_array(user_id ORDER BY position)
  FROM clerk_sync_backfill_seen
 GROUP BY walk_id, position / 1000;
DROP TABLE clerk_sync_backfill_seen;
ALTER TABLE clerk_sync_backfill_seen_lists RENAME TO clerk_sync_backfill_seen;
