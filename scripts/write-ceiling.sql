-- The database alone, doing only the writes every event needs: what `scripts/bench-replay`
-- and `scripts/bench-backfill` compare clerk-sync's bulk paths with (the bulk counterpart of
-- `pgbench-apply-delivery.sql`). No client work, no rules: the events are parsed into a
-- table first (not timed), then `CALL clerk_sync_ceiling(k, n, reads, deliveries)` in n
-- sessions applies batches k, k + n, … of 2,000 events (the default PostgreSQL batch), each
-- its own transaction: the newest version of each user upserted into "User" and into the
-- bookkeeping, and (with `deliveries`, as replay does; backfill records none) every event
-- recorded as a delivery (a delete only as a delivery).
-- With `reads`, each batch first reads what the rules look at, as clerk-sync's batches
-- read it (set-wide, by id and by address) and takes the addresses' advisory locks; the
-- results are not used.
-- Run by psql with the events' JSON lines already in the table `ceiling_raw (line text)`.
CREATE TABLE ceiling_events AS
SELECT row_number() OVER () - 1 AS n,
       j->>'type' AS event_type,
       j->'data'->>'id' AS user_id,
       (j->'data'->>'updated_at')::bigint AS version,
       encode(sha256(convert_to(line, 'UTF8')), 'hex') AS digest,
       nullif(concat_ws(' ', j->'data'->>'first_name', j->'data'->>'last_name'), '') AS name,
       j->'data'->'email_addresses'->0->>'email_address' AS address,
       to_timestamp((j->'data'->>'created_at')::bigint / 1000.0) AT TIME ZONE 'UTC' AS created,
       to_timestamp((j->'data'->>'updated_at')::bigint / 1000.0) AT TIME ZONE 'UTC' AS updated,
       'replay_' || left(md5(line), 32) AS svix_id
  FROM (SELECT line, line::jsonb AS j FROM ceiling_raw) r;
CREATE INDEX ON ceiling_events (n);
DROP TABLE ceiling_raw;
ANALYZE ceiling_events;

CREATE PROCEDURE clerk_sync_ceiling(first_batch int, step int, reads boolean, deliveries boolean)
LANGUAGE plpgsql AS $$
DECLARE
    b int := first_batch;
    total bigint := (SELECT count(*) FROM ceiling_events);
    users text[];
    ids text[];
    addresses text[];
BEGIN
    WHILE b::bigint * 2000 < total LOOP
        IF reads THEN
            SELECT array_agg(DISTINCT user_id ORDER BY user_id), array_agg(svix_id),
                   array_agg(DISTINCT address ORDER BY address) FILTER (WHERE address IS NOT NULL)
              INTO users, ids, addresses
              FROM ceiling_events WHERE n >= b * 2000 AND n < (b + 1) * 2000;
            PERFORM count(*) FROM clerk_sync.users s LEFT JOIN "User" u ON u.id = s.user_id
              WHERE s.user_id = ANY(users);
            PERFORM count(pg_advisory_xact_lock(hashtextextended(a, 7))) FROM unnest(addresses) AS a;
            PERFORM count(*) FROM "User" WHERE id = ANY(users);
            IF deliveries THEN
                PERFORM count(*) FROM clerk_sync.deliveries WHERE svix_id = ANY(ids);
            END IF;
            PERFORM count(*) FROM "User" WHERE mail_address = ANY(addresses);
            PERFORM count(*) FROM clerk_sync.users WHERE email = ANY(addresses);
        END IF;
        INSERT INTO "User" (id, name, mail_address, "createdAt", "updatedAt")
        SELECT DISTINCT ON (user_id) user_id, name, address, created, updated
          FROM ceiling_events
         WHERE n >= b * 2000 AND n < (b + 1) * 2000 AND event_type <> 'user.deleted'
         ORDER BY user_id, version DESC
        ON CONFLICT (id) DO UPDATE
           SET name = EXCLUDED.name, mail_address = EXCLUDED.mail_address,
               "createdAt" = EXCLUDED."createdAt", "updatedAt" = EXCLUDED."updatedAt";
        INSERT INTO clerk_sync.users (user_id, version, digest, email)
        SELECT DISTINCT ON (user_id) user_id, version, digest, address
          FROM ceiling_events
         WHERE n >= b * 2000 AND n < (b + 1) * 2000 AND event_type <> 'user.deleted'
         ORDER BY user_id, version DESC
        ON CONFLICT (user_id) DO UPDATE
           SET version = EXCLUDED.version, digest = EXCLUDED.digest, email = EXCLUDED.email;
        IF deliveries THEN
            INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome)
            SELECT svix_id, event_type, user_id, 'applied'
              FROM ceiling_events
             WHERE n >= b * 2000 AND n < (b + 1) * 2000
            ON CONFLICT (svix_id) DO NOTHING;
        END IF;
        COMMIT;
        b := b + step;
    END LOOP;
END $$;

-- The staging table's pages are written out now, not during the timed run.
CHECKPOINT;
