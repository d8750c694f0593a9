-- pgbench script: exactly the statement clerk-sync runs for one delivery (a user.updated for one
-- of 20,000 users, fresh svix-id, a version newer than any before it, as the load generator
-- sends). Used for the per-delivery ceiling in BENCHMARKS.md.
\set u random(1, 20000)
SELECT clerk_sync.apply_delivery(md5(random()::text), 'user.updated', 'upsert', 'user_pgb' || :u, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, md5(random()::text), 'Bench User', 'pgb' || :u || '@example.com', NULL, now()::timestamp, now()::timestamp, false);
