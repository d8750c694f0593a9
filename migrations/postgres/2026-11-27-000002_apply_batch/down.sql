DROP FUNCTION IF EXISTS clerk_sync.apply_batch;
