-- pgbench script: exactly the statement clerk-sync runs for one delivery (a user.updated for one
-- of 20,000 users, fresh svix-id). Used for the per-delivery ceiling in BENCHMARKS.md.
\set u random(1, 20000)
\set v random(1, 1000000000)
SELECT clerk_sync.apply_delivery(md5(random()::text), 'user.updated', 'upsert', 'user_pgb' || :u, :v, md5(:v::text), 'Bench User', 'pgb' || :u || '@example.com', NULL, now()::timestamp, now()::timestamp, false);
