DROP TABLE IF EXISTS clerk_sync_users;
DROP TABLE IF EXISTS clerk_sync_deliveries;
