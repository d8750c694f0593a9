DROP INDEX IF EXISTS clerk_sync_deliveries_user_id_idx;
DROP TABLE IF EXISTS clerk_sync_backfill_seen;
DROP TABLE IF EXISTS clerk_sync_backfill_walks;
