-- Back to the executors as 2026-12-02-000015_one_rule_book left them (one set-based path
-- for every size).

-- Locks, then reads, in one round trip:
-- 1. the bookkeeping rows of p_users (sorted by the caller, byte order), each locked where
--    it exists (`DO UPDATE ... WHERE false` locks without writing) and made where it does not,
--    with the values the caller gives (i_*: what the user most likely ends with, so that a new
--    user's row is written once);
-- 2. an advisory lock on every address involved (p_claims, and what those users' bookkeeping
--    claims and their rows hold), in byte order;
-- 3. the snapshot, as one JSON object (one value: a typed statement diesel prepares once):
--    "a" the locked addresses; "m" the users whose rows were made now; "r" the delivery ids of
--    p_ids already recorded; "b" the bookkeeping rows and "w" the application rows of the
--    users, of the holders of the locked addresses and of their claimants, as arrays
--    [user_id, version, digest, email, tombstoned, delete pending, role set by a webhook] and
--    [id, mail_address, "updatedAt" in ms].
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
BEGIN
    IF cardinality(p_users) > 0 THEN
        -- RETURNING names only the rows made (a row that exists is locked, not written).
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

-- Writes a plan, in order: bookkeeping; rows moved out of the way of another row of the
-- plan; rows written (r_new: inserted, no row having existed under the user's lock; else
-- updated, with their role or keeping their own); rows moved; deletes tried,
-- each where the application's foreign keys allow (`delete_pending` says where they
-- refused); deliveries recorded, a delivery's outcome being d_refused instead of d_outcome
-- where the delete of its user was refused. Returns the users whose rows were deleted.
-- A delivery recorded meanwhile by another transaction fails the whole plan as a
-- serialisation failure: retried, it is a duplicate.
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
BEGIN
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
        -- A role of NULL leaves the row's own.
        UPDATE "User" u
           SET name = n.name, mail_address = n.address,
               role = COALESCE(n.role::"Role", u.role),
               "createdAt" = n.created, "updatedAt" = n.updated
          FROM unnest(r_id, r_name, r_address, r_role, r_created, r_updated, r_new)
               AS n(id, name, address, role, created, updated, new)
         WHERE u.id = n.id AND NOT n.new;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        -- A row the application deleted since the lock was taken: the next attempt inserts it.
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
    IF cardinality(d_id) > 0 THEN
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
