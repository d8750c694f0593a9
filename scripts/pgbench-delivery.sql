-- pgbench script: exactly the statements clerk-sync runs for one delivery (a user.updated for one
-- of 20,000 users, fresh svix-id, a version newer than any before it, as the load generator
-- sends): the port's lock-and-read of a lone unit of work, then its planned write (the
-- bookkeeping row, the "User" row, the delivery's record), in one transaction. Used for the
-- per-delivery ceiling in BENCHMARKS.md. (pgbench sends the four statements one after another;
-- clerk-sync pipelines them in two round trips.)
\set u random(1, 20000)
BEGIN;
SELECT clerk_sync.lock_and_read_one('user_pgb' || :u, -1::bigint, '', NULL::text, false, 'pgb' || :u || '@example.com', md5(random()::text));
SELECT clerk_sync.write_one('user_pgb' || :u, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, md5(random()::text), 'pgb' || :u || '@example.com', false, false, false, 'user_pgb' || :u, 'Bench User', 'pgb' || :u || '@example.com', 'USER', now()::timestamp, now()::timestamp, NOT EXISTS (SELECT FROM "User" WHERE id = 'user_pgb' || :u), md5(random()::text), 'user.updated', 'user_pgb' || :u, 'applied');
COMMIT;
