DROP FUNCTION IF EXISTS clerk_sync.apply_delivery;
DROP FUNCTION IF EXISTS clerk_sync.retry_delete;
DROP FUNCTION IF EXISTS clerk_sync.finish_delete;
DROP FUNCTION IF EXISTS clerk_sync.settle_address;
DROP FUNCTION IF EXISTS clerk_sync.lock_addresses;
DROP TABLE IF EXISTS clerk_sync.users;
DROP TABLE IF EXISTS clerk_sync.deliveries;
