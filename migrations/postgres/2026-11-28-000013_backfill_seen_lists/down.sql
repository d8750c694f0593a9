CREATE TABLE clerk_sync.backfill_seen_rows (
    walk_id  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (walk_id, user_id)
);
INSERT INTO clerk_sync.backfill_seen_rows (walk_id, user_id, position)
SELECT s.walk_id, u.user_id, (s.page + 1) * 1000 + u.ord - 1
  FROM clerk_sync.backfill_seen s, unnest(s.user_ids) WITH ORDINALITY AS u(user_id, ord)
ON CONFLICT DO NOTHING;
DROP TABLE clerk_sync.backfill_seen;
ALTER TABLE clerk_sync.backfill_seen_rows RENAME TO backfill_seen;
ALTER TABLE clerk_sync.backfill_seen RENAME CONSTRAINT backfill_seen_rows_pkey TO backfill_seen_pkey;
CREATE INDEX backfill_seen_position_idx ON clerk_sync.backfill_seen (walk_id, position);
