-- pgbench script: exactly the statements clerk-sync runs for one delivery on the cuid-clerkid
-- application shape (fixtures/prisma/cuid-clerkid.prisma), as scripts/pgbench-delivery.sql
-- does for the seed's table: a user.updated for one of 20,000 users, fresh svix-id, a version
-- newer than any before it. The mapped transaction's settings (`SET LOCAL plan_cache_mode`,
-- `enable_seqscan`, `enable_hashjoin`, `enable_mergejoin`, which the daemon sends with its
-- BEGIN in one message) come from scripts/bench-http as the session's (PGOPTIONS), so that
-- pgbench, which sends each statement in a round trip of its own, makes as many round trips
-- as for the seed's script. Then BEGIN; the shape's lone executor (LONE_EXECUTOR:
-- scripts/bench-http puts in the name the migration gave it); then
-- the one-statement write — updating the user's bookkeeping and row where the row exists,
-- inserting the row (a new cuid-like key) where it does not — as the daemon writes them. The
-- executor's answer says which (`\gset`); clerk-sync's planner decides that from the same rows.
\set u random(1, 20000)
BEGIN;
SELECT COALESCE(bool_or(x.held AND x.id = 'user_pgb' || :u), false) AS old FROM LONE_EXECUTOR('user_pgb' || :u, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, md5(random()::text), 'pgb' || :u || '@example.com', false, 'pgb' || :u || '@example.com', md5(random()::text)) AS x(recorded bool, id text, kept bool, version int8, digest text, email text, deleted bool, delete_pending bool, role_from_webhook bool, held bool, address text, updated_ms int8, "foreign" bool, made bool, locked bool) \gset
\if :old
WITH cs_b AS (UPDATE clerk_sync.users s SET version = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, digest = md5(random()::text), email = 'pgb' || :u || '@example.com', role_from_webhook = false, deleted_at = CASE WHEN false THEN COALESCE(s.deleted_at, now()) ELSE s.deleted_at END, delete_attempted_at = CASE WHEN false THEN now() ELSE s.delete_attempted_at END WHERE s.user_id = 'user_pgb' || :u), cs_i AS (SELECT 1 WHERE false), cs_u AS (UPDATE "User" AS cs_row SET "email" = 'pgb' || :u || '@example.com', "firstName" = 'Bench'::text, "lastName" = 'User'::text, "imageUrl" = 'https://img.clerk.com/bench'::text, "createdAt" = '2024-05-01 12:00:00.123000'::text::timestamp, "updatedAt" = now()::text::timestamp WHERE cs_row."clerkId" = 'user_pgb' || :u RETURNING 1), cs_d AS (INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome) VALUES (md5(random()::text), 'user.updated'::text, 'user_pgb' || :u, 'applied'::text) ON CONFLICT (svix_id) DO NOTHING RETURNING 1) SELECT clerk_sync.written_or_retry((SELECT count(*) FROM cs_u), 1::int8, (SELECT count(*) FROM cs_d), 1::int8) AS written;
\else
WITH cs_b AS (SELECT 1), cs_i AS (INSERT INTO "User" ("id", "clerkId", "email", "firstName", "lastName", "imageUrl", "createdAt", "updatedAt") VALUES ('c' || left(md5(random()::text), 24), 'user_pgb' || :u, 'pgb' || :u || '@example.com', 'Bench'::text, 'User'::text, 'https://img.clerk.com/bench'::text, '2024-05-01 12:00:00.123000'::text::timestamp, now()::text::timestamp) RETURNING 1), cs_u AS (SELECT 1 WHERE false), cs_d AS (INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome) VALUES (md5(random()::text), 'user.updated'::text, 'user_pgb' || :u, 'applied'::text) ON CONFLICT (svix_id) DO NOTHING RETURNING 1) SELECT clerk_sync.written_or_retry((SELECT count(*) FROM cs_u), 0::int8, (SELECT count(*) FROM cs_d), 1::int8) AS written;
\endif
COMMIT;
