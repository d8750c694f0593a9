DROP INDEX IF EXISTS clerk_sync.deliveries_user_id_idx;
DROP TABLE IF EXISTS clerk_sync.backfill_seen;
DROP TABLE IF EXISTS clerk_sync.backfill_walks;
