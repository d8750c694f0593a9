-- pgbench script: the statements of scripts/pgbench-delivery.sql (one delivery's lock-and-read,
-- then its planned write, in one transaction), sent in two pipelined round trips as clerk-sync
-- sends them: BEGIN with the read, then the write with COMMIT. One Sync per round trip (the
-- daemon's driver sends one per statement), so this is the database's floor for the design's
-- one delivery. Needs pgbench -M extended or prepared.
\set u random(1, 20000)
\startpipeline
BEGIN;
SELECT clerk_sync.lock_and_read_one('user_pgb' || :u, -1::bigint, '', NULL::text, false, 'pgb' || :u || '@example.com', md5(random()::text));
\endpipeline
\startpipeline
SELECT clerk_sync.write_one('user_pgb' || :u, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, md5(random()::text), 'pgb' || :u || '@example.com', false, false, false, 'user_pgb' || :u, 'Bench User', 'pgb' || :u || '@example.com', 'USER', now()::timestamp, now()::timestamp, NOT EXISTS (SELECT FROM "User" WHERE id = 'user_pgb' || :u), md5(random()::text), 'user.updated', 'user_pgb' || :u, 'applied');
COMMIT;
\endpipeline
