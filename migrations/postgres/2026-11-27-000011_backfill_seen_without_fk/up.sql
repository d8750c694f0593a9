-- A checkpoint records up to 10,000 seen ids at once; the foreign key checked each of them
-- against the walk, one query per id (about a seventh of a backfill's statement time).
-- Nothing but clerk-sync writes these tables, and it removes the seen ids with their walk
-- itself (`backfill_begin_walk`).
ALTER TABLE clerk_sync.backfill_seen DROP CONSTRAINT backfill_seen_walk_id_fkey;
