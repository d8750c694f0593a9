-- Back to 2026-12-06-000020_bulk_reads_by_key_generic's clerk_sync.lock_and_read (a bulk
-- batch's users' bookkeeping and application rows read before and again after the locks).
CREATE OR REPLACE FUNCTION clerk_sync.lock_and_read(
    p_users TEXT[], i_version BIGINT[], i_digest TEXT[], i_email TEXT[], i_role BOOLEAN[],
    p_claims TEXT[], p_ids TEXT[])
RETURNS TEXT
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
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
    v_answer TEXT;
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
    IF cardinality(p_users) > 64 THEN
        -- A bulk batch (a group commit never holds more than 64): each table through one index
        -- scan over the batch's keys (the unit of work sets enable_seqscan and the joins off).
        SELECT COALESCE(array_agg(a ORDER BY a COLLATE "C"), '{}') INTO v_addresses FROM (
            SELECT unnest(p_claims) AS a
            UNION SELECT s.email FROM clerk_sync.users s WHERE s.user_id = ANY(p_users)
            UNION SELECT u.mail_address FROM "User" u WHERE u.id = ANY(p_users)
        ) AS involved WHERE a IS NOT NULL;
    ELSE
        SELECT COALESCE(array_agg(a ORDER BY a COLLATE "C"), '{}') INTO v_addresses FROM (
            SELECT unnest(p_claims) AS a
            UNION SELECT s.email FROM unnest(p_users) AS k(id) CROSS JOIN LATERAL
                  (SELECT s.email FROM clerk_sync.users s WHERE s.user_id = k.id LIMIT 1) s
            UNION SELECT u.mail_address FROM unnest(p_users) AS k(id) CROSS JOIN LATERAL
                  (SELECT u.mail_address FROM "User" u WHERE u.id = k.id LIMIT 1) u
        ) AS involved WHERE a IS NOT NULL;
    END IF;
    SELECT count(pg_advisory_xact_lock(hashtextextended(a, 7))) INTO v_locked
      FROM unnest(v_addresses) AS a;
    -- Read after every lock is held.
    IF cardinality(p_users) > 64 THEN
        SELECT COALESCE(array_agg(id), '{}') INTO v_ids FROM (
            SELECT unnest(p_users) AS id
            UNION SELECT u.id FROM "User" u WHERE u.mail_address = ANY(v_addresses)
            UNION SELECT s.user_id FROM clerk_sync.users s WHERE s.email = ANY(v_addresses)
        ) AS involved;
        SELECT json_build_object(
                'a', to_json(v_addresses),
                'm', to_json(v_made),
                'r', (SELECT COALESCE(json_agg(d.svix_id), '[]') FROM clerk_sync.deliveries d
                       WHERE d.svix_id = ANY(p_ids)),
                'b', (SELECT COALESCE(json_agg(json_build_array(s.user_id, s.version, s.digest,
                                                                s.email, s.deleted_at IS NOT NULL,
                                                                s.delete_pending,
                                                                s.role_from_webhook)), '[]')
                        FROM clerk_sync.users s WHERE s.user_id = ANY(v_ids)),
                'w', (SELECT COALESCE(json_agg(json_build_array(u.id, u.mail_address,
                                                                floor(extract(epoch FROM u."updatedAt") * 1000)::BIGINT)), '[]')
                        FROM "User" u WHERE u.id = ANY(v_ids))
            )::TEXT INTO v_answer;
        RETURN v_answer;
    END IF;
    SELECT COALESCE(array_agg(id), '{}') INTO v_ids FROM (
        SELECT unnest(p_users) AS id
        UNION SELECT h.id FROM unnest(v_addresses) AS a(a) CROSS JOIN LATERAL
              (SELECT u.id FROM "User" u WHERE u.mail_address = a.a OFFSET 0) h
        UNION SELECT c.id FROM unnest(v_addresses) AS a(a) CROSS JOIN LATERAL
              (SELECT s.user_id AS id FROM clerk_sync.users s WHERE s.email = a.a OFFSET 0) c
    ) AS involved;
    RETURN json_build_object(
        'a', to_json(v_addresses),
        'm', to_json(v_made),
        'r', (SELECT COALESCE(json_agg(d.svix_id), '[]') FROM unnest(p_ids) AS k(id)
              CROSS JOIN LATERAL
              (SELECT d.svix_id FROM clerk_sync.deliveries d WHERE d.svix_id = k.id LIMIT 1) d),
        'b', (SELECT COALESCE(json_agg(json_build_array(s.user_id, s.version, s.digest, s.email,
                                                        s.deleted_at IS NOT NULL, s.delete_pending,
                                                        s.role_from_webhook)), '[]')
                FROM unnest(v_ids) AS k(id) CROSS JOIN LATERAL
                     (SELECT * FROM clerk_sync.users s WHERE s.user_id = k.id LIMIT 1) s),
        'w', (SELECT COALESCE(json_agg(json_build_array(u.id, u.mail_address,
                                                        floor(extract(epoch FROM u."updatedAt") * 1000)::BIGINT)), '[]')
                FROM unnest(v_ids) AS k(id) CROSS JOIN LATERAL
                     (SELECT * FROM "User" u WHERE u.id = k.id LIMIT 1) u)
    )::TEXT;
END $$;
