-- The executors in two shapes by size, doing the same thing: for a few users (one delivery, a
-- small group commit) each lock, read and write is a statement with scalar parameters, which
-- PostgreSQL plans once per connection and reuses (a statement over a whole array is planned
-- again on every call: its plan depends on the array's length, so a cached plan never looks
-- cheaper; that planning was most of a lone delivery's server time). Larger groups and bulk
-- batches keep the set-based statements, planned per call, as before: there the planning is
-- shared by the rows, and a plan made for ten rows would walk the arrays once per row. Where
-- the shapes meet was measured (BENCHMARKS.md, session 9): at 64 users, groups of 10 to 20
-- deliveries cost more row by row than planned once; at 4, the daemon at 64 concurrent
-- deliveries did better.
-- Still executors only: neither shape looks at a version, a digest, a role or an address to
-- choose what to write (see src/db/port.rs).

-- Locks, then reads, in one round trip; see 2026-12-02-000015_one_rule_book for the steps and
-- the JSON it answers. The few-rows shape reads, for every user and every locked address, by
-- key. Few is at most 4 users, 16 addresses claimed and 16 delivery ids.
CREATE OR REPLACE FUNCTION clerk_sync.lock_and_read(
    p_users TEXT[], i_version BIGINT[], i_digest TEXT[], i_email TEXT[], i_role BOOLEAN[],
    p_claims TEXT[], p_ids TEXT[])
RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_addresses TEXT[];
    v_made TEXT[] := '{}';
    v_ids TEXT[];
    v_locked BIGINT;
    v_involved TEXT[];
    v_recorded TEXT[] := '{}';
    v_b JSON[] := '{}';
    v_w JSON[] := '{}';
    v_j JSON;
    v_row JSON;
    v_at INTEGER;
    v_user TEXT;
    v_email TEXT;
    v_address TEXT;
    v_claimants TEXT[];
    v_void TEXT;
BEGIN
    IF cardinality(p_users) <= 4
       AND cardinality(p_claims) <= 16
       AND cardinality(p_ids) <= 16 THEN
        v_involved := p_claims;
        FOR i IN 1 .. cardinality(p_users) LOOP
            v_user := p_users[i];
            -- The user's lock: its bookkeeping row, locked where it exists, else made (with
            -- its initial values) or, made meanwhile by another writer, locked.
            SELECT s.email INTO v_email FROM clerk_sync.users s WHERE s.user_id = v_user FOR UPDATE;
            IF NOT FOUND THEN
                INSERT INTO clerk_sync.users AS s (user_id, version, digest, email, role_from_webhook)
                VALUES (v_user, i_version[i], i_digest[i], i_email[i], i_role[i])
                ON CONFLICT (user_id) DO UPDATE SET version = s.version WHERE false
                RETURNING s.email INTO v_email;
                IF FOUND THEN
                    v_made := v_made || v_user;
                ELSE
                    SELECT s.email INTO v_email FROM clerk_sync.users s WHERE s.user_id = v_user;
                END IF;
            END IF;
            SELECT u.mail_address INTO v_address FROM "User" u WHERE u.id = v_user;
            v_involved := v_involved || v_email || v_address;
        END LOOP;
        -- The addresses, distinct, in byte order: by insertion for a handful (no query).
        IF cardinality(v_involved) <= 8 THEN
            v_addresses := '{}';
            FOREACH v_address IN ARRAY v_involved LOOP
                CONTINUE WHEN v_address IS NULL OR v_address = ANY(v_addresses);
                v_at := cardinality(v_addresses);
                WHILE v_at > 0 AND v_addresses[v_at] COLLATE "C" > v_address COLLATE "C" LOOP
                    v_addresses[v_at + 1] := v_addresses[v_at];
                    v_at := v_at - 1;
                END LOOP;
                v_addresses[v_at + 1] := v_address;
            END LOOP;
        ELSE
            SELECT COALESCE(array_agg(a ORDER BY a COLLATE "C"), '{}') INTO v_addresses
              FROM (SELECT DISTINCT a FROM unnest(v_involved) AS a WHERE a IS NOT NULL) AS d;
        END IF;
        FOREACH v_address IN ARRAY v_addresses LOOP
            v_void := pg_advisory_xact_lock(hashtextextended(v_address, 7))::text;
        END LOOP;
        -- Read after every lock is held.
        v_ids := p_users;
        FOREACH v_address IN ARRAY v_addresses LOOP
            -- The row holding the address and every user claiming it.
            SELECT array_agg(id) INTO v_claimants FROM (
                SELECT u.id FROM "User" u WHERE u.mail_address = v_address
                UNION ALL
                SELECT s.user_id FROM clerk_sync.users s WHERE s.email = v_address
            ) AS involved;
            FOREACH v_user IN ARRAY COALESCE(v_claimants, '{}') LOOP
                IF NOT (v_user = ANY(v_ids)) THEN
                    v_ids := v_ids || v_user;
                END IF;
            END LOOP;
        END LOOP;
        FOREACH v_user IN ARRAY v_ids LOOP
            -- Its bookkeeping row and its application row, where it has them.
            SELECT CASE WHEN s.user_id IS NOT NULL THEN
                       json_build_array(s.user_id, s.version, s.digest, s.email,
                                        s.deleted_at IS NOT NULL, s.delete_pending,
                                        s.role_from_webhook) END,
                   CASE WHEN u.id IS NOT NULL THEN
                       json_build_array(u.id, u.mail_address,
                                        floor(extract(epoch FROM u."updatedAt") * 1000)::BIGINT) END
              INTO v_j, v_row
              FROM (SELECT v_user AS id) AS k
              LEFT JOIN clerk_sync.users s ON s.user_id = k.id
              LEFT JOIN "User" u ON u.id = k.id;
            IF v_j IS NOT NULL THEN
                v_b := v_b || v_j;
            END IF;
            IF v_row IS NOT NULL THEN
                v_w := v_w || v_row;
            END IF;
        END LOOP;
        FOREACH v_user IN ARRAY p_ids LOOP
            PERFORM 1 FROM clerk_sync.deliveries d WHERE d.svix_id = v_user;
            IF FOUND THEN
                v_recorded := v_recorded || v_user;
            END IF;
        END LOOP;
        RETURN json_build_object('a', to_json(v_addresses), 'm', to_json(v_made),
                                 'r', to_json(v_recorded), 'b', to_json(v_b),
                                 'w', to_json(v_w))::TEXT;
    END IF;

    IF cardinality(p_users) > 0 THEN
        WITH made AS (
            INSERT INTO clerk_sync.users AS s (user_id, version, digest, email, role_from_webhook)
            SELECT * FROM unnest(p_users, i_version, i_digest, i_email, i_role)
                    AS n(user_id, version, digest, email, role_from_webhook)
             ORDER BY user_id COLLATE "C"
            ON CONFLICT (user_id) DO UPDATE SET version = s.version WHERE false
            RETURNING s.user_id
        )
        SELECT COALESCE(array_agg(user_id), '{}') INTO v_made FROM made;
    END IF;
    SELECT COALESCE(array_agg(a ORDER BY a COLLATE "C"), '{}') INTO v_addresses FROM (
        SELECT unnest(p_claims) AS a
        UNION SELECT email FROM clerk_sync.users WHERE user_id = ANY(p_users)
        UNION SELECT mail_address FROM "User" WHERE id = ANY(p_users)
    ) AS involved WHERE a IS NOT NULL;
    SELECT count(pg_advisory_xact_lock(hashtextextended(a, 7))) INTO v_locked
      FROM unnest(v_addresses) AS a;
    -- Read after every lock is held.
    SELECT COALESCE(array_agg(id), '{}') INTO v_ids FROM (
        SELECT unnest(p_users) AS id
        UNION SELECT u.id FROM "User" u WHERE u.mail_address = ANY(v_addresses)
        UNION SELECT s.user_id FROM clerk_sync.users s WHERE s.email = ANY(v_addresses)
    ) AS involved;
    RETURN json_build_object(
        'a', to_json(v_addresses),
        'm', to_json(v_made),
        'r', (SELECT COALESCE(json_agg(d.svix_id), '[]') FROM clerk_sync.deliveries d
               WHERE d.svix_id = ANY(p_ids)),
        'b', (SELECT COALESCE(json_agg(json_build_array(s.user_id, s.version, s.digest, s.email,
                                                        s.deleted_at IS NOT NULL, s.delete_pending,
                                                        s.role_from_webhook)), '[]')
                FROM clerk_sync.users s WHERE s.user_id = ANY(v_ids)),
        'w', (SELECT COALESCE(json_agg(json_build_array(u.id, u.mail_address,
                                                        floor(extract(epoch FROM u."updatedAt") * 1000)::BIGINT)), '[]')
                FROM "User" u WHERE u.id = ANY(v_ids))
    )::TEXT;
END $$;

-- Writes a plan; see 2026-12-02-000015_one_rule_book for the order and the answer. The
-- few-rows shape writes row by row, by key, in the same order.
CREATE OR REPLACE FUNCTION clerk_sync.write_plan(
    b_user TEXT[], b_version BIGINT[], b_digest TEXT[], b_email TEXT[], b_role BOOLEAN[],
    b_tombstone BOOLEAN[], b_attempted BOOLEAN[],
    p_vacate TEXT[],
    r_id TEXT[], r_name TEXT[], r_address TEXT[], r_role TEXT[], r_created TIMESTAMP[], r_updated TIMESTAMP[],
    r_new BOOLEAN[],
    m_id TEXT[], m_address TEXT[],
    p_deletes TEXT[],
    d_id TEXT[], d_type TEXT[], d_user TEXT[], d_outcome TEXT[], d_refused TEXT[]
) RETURNS TEXT[]
LANGUAGE plpgsql AS $$
DECLARE
    v_user TEXT;
    v_done TEXT[] := '{}';
    v_count BIGINT;
    v_few BOOLEAN := cardinality(b_user) <= 4
                     AND cardinality(p_vacate) <= 4
                     AND cardinality(r_id) <= 4
                     AND cardinality(m_id) <= 4
                     AND cardinality(d_id) <= 16;
BEGIN
    IF v_few THEN
        FOR i IN 1 .. cardinality(b_user) LOOP
            UPDATE clerk_sync.users s
               SET version = b_version[i], digest = b_digest[i], email = b_email[i],
                   role_from_webhook = b_role[i],
                   deleted_at = CASE WHEN b_tombstone[i] THEN COALESCE(s.deleted_at, now()) ELSE s.deleted_at END,
                   delete_attempted_at = CASE WHEN b_attempted[i] THEN now() ELSE s.delete_attempted_at END
             WHERE s.user_id = b_user[i];
        END LOOP;
        FOREACH v_user IN ARRAY p_vacate LOOP
            UPDATE "User" SET mail_address = id || '@moving.invalid' WHERE id = v_user;
        END LOOP;
        FOR i IN 1 .. cardinality(r_id) LOOP
            IF r_new[i] THEN
                INSERT INTO "User" (id, name, mail_address, role, "createdAt", "updatedAt")
                VALUES (r_id[i], r_name[i], r_address[i], r_role[i]::"Role", r_created[i], r_updated[i]);
            END IF;
        END LOOP;
        FOR i IN 1 .. cardinality(r_id) LOOP
            IF NOT r_new[i] THEN
                -- A role of NULL leaves the row's own.
                UPDATE "User" u
                   SET name = r_name[i], mail_address = r_address[i],
                       role = COALESCE(r_role[i]::"Role", u.role),
                       "createdAt" = r_created[i], "updatedAt" = r_updated[i]
                 WHERE u.id = r_id[i];
                -- A row the application deleted since the lock was taken: the next attempt
                -- inserts it.
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'a row of the plan was deleted concurrently; retry'
                        USING ERRCODE = 'serialization_failure';
                END IF;
            END IF;
        END LOOP;
        FOR i IN 1 .. cardinality(m_id) LOOP
            UPDATE "User" SET mail_address = m_address[i] WHERE id = m_id[i];
        END LOOP;
    ELSE
        IF cardinality(b_user) > 0 THEN
            UPDATE clerk_sync.users s
               SET version = n.version, digest = n.digest, email = n.email,
                   role_from_webhook = n.role,
                   deleted_at = CASE WHEN n.tombstone THEN COALESCE(s.deleted_at, now()) ELSE s.deleted_at END,
                   delete_attempted_at = CASE WHEN n.attempted THEN now() ELSE s.delete_attempted_at END
              FROM unnest(b_user, b_version, b_digest, b_email, b_role, b_tombstone, b_attempted)
                   AS n(user_id, version, digest, email, role, tombstone, attempted)
             WHERE s.user_id = n.user_id;
        END IF;
        IF cardinality(p_vacate) > 0 THEN
            UPDATE "User" SET mail_address = id || '@moving.invalid' WHERE id = ANY(p_vacate);
        END IF;
        -- (Each statement only where it has rows: an empty one still costs its execution.)
        IF true = ANY(r_new) THEN
            INSERT INTO "User" (id, name, mail_address, role, "createdAt", "updatedAt")
            SELECT n.id, n.name, n.address, n.role::"Role", n.created, n.updated
              FROM unnest(r_id, r_name, r_address, r_role, r_created, r_updated, r_new)
                   AS n(id, name, address, role, created, updated, new)
             WHERE n.new;
        END IF;
        IF false = ANY(r_new) THEN
            UPDATE "User" u
               SET name = n.name, mail_address = n.address,
                   role = COALESCE(n.role::"Role", u.role),
                   "createdAt" = n.created, "updatedAt" = n.updated
              FROM unnest(r_id, r_name, r_address, r_role, r_created, r_updated, r_new)
                   AS n(id, name, address, role, created, updated, new)
             WHERE u.id = n.id AND NOT n.new;
            GET DIAGNOSTICS v_count = ROW_COUNT;
            IF v_count <> cardinality(array_positions(r_new, false)) THEN
                RAISE EXCEPTION 'a row of the plan was deleted concurrently; retry'
                    USING ERRCODE = 'serialization_failure';
            END IF;
        END IF;
        IF cardinality(m_id) > 0 THEN
            UPDATE "User" u SET mail_address = n.address
              FROM unnest(m_id, m_address) AS n(id, address)
             WHERE u.id = n.id;
        END IF;
    END IF;
    FOREACH v_user IN ARRAY p_deletes LOOP
        BEGIN
            -- A foreign key the application declared DEFERRABLE would only fail at COMMIT,
            -- beyond this handler: check it now.
            SET CONSTRAINTS ALL IMMEDIATE;
            DELETE FROM "User" WHERE id = v_user;
            v_done := v_done || v_user;
        EXCEPTION WHEN foreign_key_violation THEN
            NULL;
        END;
        UPDATE clerk_sync.users SET delete_pending = NOT (v_user = ANY(v_done))
         WHERE user_id = v_user;
    END LOOP;
    IF v_few THEN
        FOR i IN 1 .. cardinality(d_id) LOOP
            INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome)
            VALUES (d_id[i], d_type[i], d_user[i],
                    CASE WHEN d_refused[i] IS NOT NULL AND NOT (d_user[i] = ANY(v_done))
                         THEN d_refused[i] ELSE d_outcome[i] END)
            ON CONFLICT (svix_id) DO NOTHING;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'a delivery of the plan was recorded concurrently; retry'
                    USING ERRCODE = 'serialization_failure';
            END IF;
        END LOOP;
    ELSIF cardinality(d_id) > 0 THEN
        INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome)
        SELECT n.id, n.type, n.usr,
               CASE WHEN n.refused IS NOT NULL AND NOT (n.usr = ANY(v_done)) THEN n.refused
                    ELSE n.outcome END
          FROM unnest(d_id, d_type, d_user, d_outcome, d_refused)
               AS n(id, type, usr, outcome, refused)
        ON CONFLICT (svix_id) DO NOTHING;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        IF v_count <> cardinality(d_id) THEN
            RAISE EXCEPTION 'a delivery of the plan was recorded concurrently; retry'
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    RETURN v_done;
END $$;
