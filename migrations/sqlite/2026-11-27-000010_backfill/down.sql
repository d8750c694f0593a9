DROP TABLE IF EXISTS clerk_sync_backfill_seen;
DROP TABLE IF EXISTS clerk_sync_backfill_walks;
