DROP TABLE IF EXISTS clerk_sync.backfill_seen;
DROP TABLE IF EXISTS clerk_sync.backfill_walks;
