-- Executors for the lone unit of work (one user, at most one claimed address and one delivery
-- id; then one bookkeeping row, one application row and one record, nothing vacated, moved or
-- deleted): the daemon's delivery when it arrives alone, which is most of them. They do what
-- lock_and_read's and write_plan's few-rows shapes do for such a unit, with scalar parameters
-- and fewer statements: the bookkeeping row read with its lock instead of again after the
-- address locks (nobody else can change it while the lock is held), the row holding each
-- address read whole instead of its id and then the row, the snapshot built once. A function
-- call with 23 array parameters cost more than the three writes it makes (BENCHMARKS.md,
-- session 10). Still executors only: neither looks at a version, a digest, a role or an
-- address to choose what to write (see src/db/port.rs).

-- Locks, then reads, in one round trip: the same steps and the same JSON answer as
-- clerk_sync.lock_and_read (2026-12-02-000015_one_rule_book) for one user.
CREATE FUNCTION clerk_sync.lock_and_read_one(
    p_user TEXT, i_version BIGINT, i_digest TEXT, i_email TEXT, i_role BOOLEAN,
    p_claim TEXT, p_id TEXT)
RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_made BOOLEAN := false;
    v_version BIGINT;
    v_digest TEXT;
    v_email TEXT;
    v_deleted BOOLEAN;
    v_pending BOOLEAN;
    v_role BOOLEAN;
    v_address TEXT;
    v_addresses TEXT[] := '{}';
    v_at INTEGER;
    v_a TEXT;
    v_holder TEXT;
    v_held TEXT;
    v_ms BIGINT;
    v_w JSON[] := '{}';
    v_b JSON[] := '{}';
    v_rows TEXT[] := '{}';
    v_booked TEXT[];
    v_others TEXT[] := '{}';
    v_ids TEXT[];
    v_js JSON[];
    v_recorded BOOLEAN;
    v_user TEXT;
    v_j JSON;
    v_void TEXT;
BEGIN
    -- The user's lock: its bookkeeping row, locked (and read) where it exists, else made
    -- (with its initial values) or, made meanwhile by another writer, locked.
    SELECT s.version, s.digest, s.email, s.deleted_at IS NOT NULL, s.delete_pending, s.role_from_webhook
      INTO v_version, v_digest, v_email, v_deleted, v_pending, v_role
      FROM clerk_sync.users s WHERE s.user_id = p_user FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO clerk_sync.users AS s (user_id, version, digest, email, role_from_webhook)
        VALUES (p_user, i_version, i_digest, i_email, i_role)
        ON CONFLICT (user_id) DO UPDATE SET version = s.version WHERE false
        RETURNING s.version, s.digest, s.email, s.deleted_at IS NOT NULL, s.delete_pending, s.role_from_webhook
             INTO v_version, v_digest, v_email, v_deleted, v_pending, v_role;
        IF FOUND THEN
            v_made := true;
        ELSE
            SELECT s.version, s.digest, s.email, s.deleted_at IS NOT NULL, s.delete_pending, s.role_from_webhook
              INTO v_version, v_digest, v_email, v_deleted, v_pending, v_role
              FROM clerk_sync.users s WHERE s.user_id = p_user FOR UPDATE;
        END IF;
    END IF;
    v_booked := ARRAY[p_user];
    SELECT u.mail_address INTO v_address FROM "User" u WHERE u.id = p_user;
    -- The addresses, distinct, in byte order; each locked.
    FOREACH v_a IN ARRAY ARRAY[p_claim, v_email, v_address] LOOP
        CONTINUE WHEN v_a IS NULL OR v_a = ANY(v_addresses);
        v_at := cardinality(v_addresses);
        WHILE v_at > 0 AND v_addresses[v_at] COLLATE "C" > v_a COLLATE "C" LOOP
            v_addresses[v_at + 1] := v_addresses[v_at];
            v_at := v_at - 1;
        END LOOP;
        v_addresses[v_at + 1] := v_a;
    END LOOP;
    FOREACH v_a IN ARRAY v_addresses LOOP
        v_void := pg_advisory_xact_lock(hashtextextended(v_a, 7))::text;
    END LOOP;
    -- Read after every lock is held: the row holding each address (one at most:
    -- "User".mail_address is unique; a table whose address column is not would need every
    -- holder read, as lock_and_read does), and every other user claiming it with its
    -- bookkeeping.
    FOREACH v_a IN ARRAY v_addresses LOOP
        SELECT u.id, u.mail_address, floor(extract(epoch FROM u."updatedAt") * 1000)::BIGINT
          INTO v_holder, v_held, v_ms
          FROM "User" u WHERE u.mail_address = v_a;
        IF FOUND AND NOT (v_holder = ANY(v_rows)) THEN
            v_w := v_w || json_build_array(v_holder, v_held, v_ms);
            v_rows := v_rows || v_holder;
            IF v_holder <> p_user THEN
                v_others := v_others || v_holder;
            END IF;
        END IF;
        SELECT array_agg(s.user_id),
               array_agg(json_build_array(s.user_id, s.version, s.digest, s.email,
                                          s.deleted_at IS NOT NULL, s.delete_pending,
                                          s.role_from_webhook))
          INTO v_ids, v_js
          FROM clerk_sync.users s WHERE s.email = v_a AND s.user_id <> p_user;
        FOR k IN 1 .. COALESCE(cardinality(v_ids), 0) LOOP
            IF NOT (v_ids[k] = ANY(v_booked)) THEN
                v_b := v_b || v_js[k];
                v_booked := v_booked || v_ids[k];
                v_others := v_others || v_ids[k];
            END IF;
        END LOOP;
    END LOOP;
    PERFORM 1 FROM clerk_sync.deliveries d WHERE d.svix_id = p_id;
    v_recorded := FOUND;
    -- The user's own row where it holds none of the addresses; the other half of everyone
    -- else involved: a holder's bookkeeping, a claimant's row.
    IF NOT (p_user = ANY(v_rows)) THEN
        SELECT json_build_array(u.id, u.mail_address,
                                floor(extract(epoch FROM u."updatedAt") * 1000)::BIGINT)
          INTO v_j FROM "User" u WHERE u.id = p_user;
        IF FOUND THEN
            v_w := v_w || v_j;
        END IF;
    END IF;
    FOREACH v_user IN ARRAY v_others LOOP
        IF NOT (v_user = ANY(v_rows)) THEN
            SELECT json_build_array(u.id, u.mail_address,
                                    floor(extract(epoch FROM u."updatedAt") * 1000)::BIGINT)
              INTO v_j FROM "User" u WHERE u.id = v_user;
            IF FOUND THEN
                v_w := v_w || v_j;
            END IF;
            v_rows := v_rows || v_user;
        END IF;
        IF NOT (v_user = ANY(v_booked)) THEN
            SELECT json_build_array(s.user_id, s.version, s.digest, s.email,
                                    s.deleted_at IS NOT NULL, s.delete_pending, s.role_from_webhook)
              INTO v_j FROM clerk_sync.users s WHERE s.user_id = v_user;
            IF FOUND THEN
                v_b := v_b || v_j;
            END IF;
            v_booked := v_booked || v_user;
        END IF;
    END LOOP;
    RETURN json_build_object(
        'a', v_addresses,
        'm', CASE WHEN v_made THEN ARRAY[p_user] ELSE '{}'::TEXT[] END,
        'r', CASE WHEN v_recorded THEN ARRAY[p_id] ELSE '{}'::TEXT[] END,
        'b', array_prepend(json_build_array(p_user, v_version, v_digest, v_email, v_deleted,
                                            v_pending, v_role), v_b),
        'w', v_w)::TEXT;
END $$;

-- Writes a lone plan (each part absent when its key is NULL), in write_plan's order; answers
-- no deletes (a plan with any goes to write_plan).
CREATE FUNCTION clerk_sync.write_one(
    b_user TEXT, b_version BIGINT, b_digest TEXT, b_email TEXT, b_role BOOLEAN,
    b_tombstone BOOLEAN, b_attempted BOOLEAN,
    r_id TEXT, r_name TEXT, r_address TEXT, r_role TEXT, r_created TIMESTAMP, r_updated TIMESTAMP,
    r_new BOOLEAN,
    d_id TEXT, d_type TEXT, d_user TEXT, d_outcome TEXT
) RETURNS TEXT[]
LANGUAGE plpgsql AS $$
BEGIN
    IF b_user IS NOT NULL THEN
        UPDATE clerk_sync.users s
           SET version = b_version, digest = b_digest, email = b_email,
               role_from_webhook = b_role,
               deleted_at = CASE WHEN b_tombstone THEN COALESCE(s.deleted_at, now()) ELSE s.deleted_at END,
               delete_attempted_at = CASE WHEN b_attempted THEN now() ELSE s.delete_attempted_at END
         WHERE s.user_id = b_user;
    END IF;
    IF r_id IS NULL THEN
        NULL;
    ELSIF r_new THEN
        INSERT INTO "User" (id, name, mail_address, role, "createdAt", "updatedAt")
        VALUES (r_id, r_name, r_address, r_role::"Role", r_created, r_updated);
    ELSE
        -- A role of NULL leaves the row's own.
        UPDATE "User" u
           SET name = r_name, mail_address = r_address,
               role = COALESCE(r_role::"Role", u.role),
               "createdAt" = r_created, "updatedAt" = r_updated
         WHERE u.id = r_id;
        -- A row the application deleted since the lock was taken: the next attempt inserts it.
        IF NOT FOUND THEN
            RAISE EXCEPTION 'a row of the plan was deleted concurrently; retry'
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    IF d_id IS NOT NULL THEN
        INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome)
        VALUES (d_id, d_type, d_user, d_outcome)
        ON CONFLICT (svix_id) DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'a delivery of the plan was recorded concurrently; retry'
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    RETURN '{}';
END $$;
