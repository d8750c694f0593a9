DELETE FROM clerk_sync.backfill_seen s
 WHERE NOT EXISTS (SELECT 1 FROM clerk_sync.backfill_walks w WHERE w.walk_id = s.walk_id);
ALTER TABLE clerk_sync.backfill_seen
  ADD CONSTRAINT backfill_seen_walk_id_fkey FOREIGN KEY (walk_id)
  REFERENCES clerk_sync.backfill_walks (walk_id) ON DELETE CASCADE;
