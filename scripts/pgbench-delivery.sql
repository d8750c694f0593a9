-- pgbench script: exactly the statements clerk-sync runs for one delivery (a user.updated for one
-- of 20,000 users, fresh svix-id, a version newer than any before it, as the load generator
-- sends): the port's lock-and-read, then the planned write (the bookkeeping row, the "User" row,
-- the delivery's record), in one transaction. Used for the per-delivery ceiling in BENCHMARKS.md.
-- (pgbench sends the four statements one after another; clerk-sync pipelines them in two round
-- trips.)
\set u random(1, 20000)
BEGIN;
SELECT clerk_sync.lock_and_read(ARRAY['user_pgb' || :u], ARRAY[-1::bigint], ARRAY[''], ARRAY[NULL::text], ARRAY[false], ARRAY['pgb' || :u || '@example.com'], ARRAY[md5(random()::text)]);
SELECT clerk_sync.write_plan(ARRAY['user_pgb' || :u], ARRAY[(extract(epoch FROM clock_timestamp()) * 1000000)::bigint], ARRAY[md5(random()::text)], ARRAY['pgb' || :u || '@example.com'], ARRAY[false], ARRAY[false], ARRAY[false], '{}'::text[], ARRAY['user_pgb' || :u], ARRAY['Bench User'], ARRAY['pgb' || :u || '@example.com'], ARRAY['USER'], ARRAY[now()::timestamp], ARRAY[now()::timestamp], ARRAY[NOT EXISTS (SELECT FROM "User" WHERE id = 'user_pgb' || :u)], '{}'::text[], '{}'::text[], '{}'::text[], ARRAY[md5(random()::text)], ARRAY['user.updated'], ARRAY['user_pgb' || :u], ARRAY['applied'], ARRAY[NULL::text]);
COMMIT;
