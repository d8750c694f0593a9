-- Back to the functions as 2026-11-28-000012_apply_delivery_common_case left them.
DROP FUNCTION clerk_sync.write_plan(TEXT[], BIGINT[], TEXT[], TEXT[], BOOLEAN[], BOOLEAN[], BOOLEAN[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], TIMESTAMP[], TIMESTAMP[], BOOLEAN[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[]);
DROP FUNCTION clerk_sync.lock_and_read(TEXT[], BIGINT[], TEXT[], TEXT[], BOOLEAN[], TEXT[], TEXT[]);

CREATE FUNCTION clerk_sync.lock_addresses(a TEXT, b TEXT, c TEXT) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    t TEXT;
    v_void TEXT;
BEGIN
    -- Sort the three values (NULL last) with plain comparisons: no query needed.
    IF b IS NOT NULL AND (a IS NULL OR b COLLATE "C" < a COLLATE "C") THEN t := a; a := b; b := t; END IF;
    IF c IS NOT NULL AND (b IS NULL OR c COLLATE "C" < b COLLATE "C") THEN t := b; b := c; c := t; END IF;
    IF b IS NOT NULL AND (a IS NULL OR b COLLATE "C" < a COLLATE "C") THEN t := a; a := b; b := t; END IF;
    IF a IS NOT NULL THEN
        v_void := pg_advisory_xact_lock(hashtextextended(a, 7))::text;
    END IF;
    IF b IS NOT NULL AND b IS DISTINCT FROM a THEN
        v_void := pg_advisory_xact_lock(hashtextextended(b, 7))::text;
    END IF;
    IF c IS NOT NULL AND c IS DISTINCT FROM b AND c IS DISTINCT FROM a THEN
        v_void := pg_advisory_xact_lock(hashtextextended(c, 7))::text;
    END IF;
END $$;

CREATE FUNCTION clerk_sync.settle_address(p_address TEXT) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    v_best   TEXT;
    v_holder TEXT;
    v_holder_dead BOOLEAN;
BEGIN
    SELECT s.user_id INTO v_best
      FROM clerk_sync.users s JOIN "User" u ON u.id = s.user_id
     WHERE s.email = p_address AND s.deleted_at IS NULL AND s.version >= 0
       AND u.mail_address <> p_address
     ORDER BY s.version DESC, s.user_id COLLATE "C" DESC
     LIMIT 1;
    IF v_best IS NULL THEN
        RETURN;
    END IF;
    SELECT u.id, (s.deleted_at IS NOT NULL) INTO v_holder, v_holder_dead
      FROM "User" u LEFT JOIN clerk_sync.users s ON s.user_id = u.id
     WHERE u.mail_address = p_address;
    IF v_holder IS NOT NULL THEN
        IF NOT COALESCE(v_holder_dead, false) THEN
            RETURN;
        END IF;
        UPDATE "User" SET mail_address = v_holder || '@displaced.invalid'
         WHERE id = v_holder AND mail_address = p_address;
    END IF;
    UPDATE "User" SET mail_address = p_address WHERE id = v_best;
END $$;

CREATE FUNCTION clerk_sync.finish_delete(p_user_id TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    v_address TEXT;
BEGIN
    -- The address lock comes after the caller's lock on the user's bookkeeping row, as in
    -- apply_delivery; read again after locking, since a displaced row only ever moves to
    -- its own placeholder.
    SELECT mail_address INTO v_address FROM "User" WHERE id = p_user_id;
    IF v_address IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(v_address, 7));
        SELECT mail_address INTO v_address FROM "User" WHERE id = p_user_id;
    END IF;
    BEGIN
        -- A foreign key the application declared DEFERRABLE would only fail at COMMIT,
        -- beyond this handler: check it now.
        SET CONSTRAINTS ALL IMMEDIATE;
        DELETE FROM "User" WHERE id = p_user_id;
    EXCEPTION WHEN foreign_key_violation THEN
        UPDATE clerk_sync.users SET delete_pending = true WHERE user_id = p_user_id;
        IF v_address IS NOT NULL THEN
            PERFORM clerk_sync.settle_address(v_address);
        END IF;
        RETURN false;
    END;
    UPDATE clerk_sync.users SET delete_pending = false WHERE user_id = p_user_id;
    IF v_address IS NOT NULL THEN
        PERFORM clerk_sync.settle_address(v_address);
    END IF;
    RETURN true;
END $$;

CREATE FUNCTION clerk_sync.retry_delete(p_user_id TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    v_pending BOOLEAN;
BEGIN
    SELECT delete_pending INTO v_pending FROM clerk_sync.users
     WHERE user_id = p_user_id FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR NOT v_pending THEN
        RETURN NULL;
    END IF;
    UPDATE clerk_sync.users SET delete_attempted_at = now() WHERE user_id = p_user_id;
    RETURN clerk_sync.finish_delete(p_user_id);
END $$;

CREATE FUNCTION clerk_sync.apply_delivery(
    p_svix_id    TEXT,
    p_event_type TEXT,
    p_kind       TEXT,
    p_user_id    TEXT,
    p_version    BIGINT,
    p_digest     TEXT,
    p_name       TEXT,
    p_email      TEXT,
    p_role       TEXT,
    p_created_at TIMESTAMP,
    p_updated_at TIMESTAMP,
    p_skip_no_email BOOLEAN
) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_state    clerk_sync.users%ROWTYPE;
    v_outcome  TEXT;
    v_row_addr TEXT;
    v_addr     TEXT;
    v_role     TEXT;
    v_holder   TEXT;
    v_holder_version BIGINT;
    v_holder_dead    BOOLEAN;
    v_holder_claim   TEXT;
    v_holder_known   BOOLEAN;
    v_void     TEXT;
BEGIN
    INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome)
    VALUES (p_svix_id, p_event_type, p_user_id, 'pending')
    ON CONFLICT (svix_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;

    IF p_kind = 'ignore' THEN
        v_outcome := 'ignored';
    ELSE
        -- The user's lock: every delivery for one user serialises here.
        SELECT * INTO v_state FROM clerk_sync.users WHERE user_id = p_user_id FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO clerk_sync.users (user_id, version, digest)
            VALUES (p_user_id, -1, '')
            ON CONFLICT (user_id) DO NOTHING;
            SELECT * INTO v_state FROM clerk_sync.users WHERE user_id = p_user_id FOR UPDATE;
        END IF;

        IF p_kind = 'delete' THEN
            IF v_state.deleted_at IS NOT NULL AND NOT v_state.delete_pending THEN
                v_outcome := 'stale';
            ELSE
                SELECT mail_address INTO v_row_addr FROM "User" WHERE id = p_user_id;
                v_void := clerk_sync.lock_addresses(v_state.email, v_row_addr, NULL)::text;
                UPDATE clerk_sync.users
                   SET deleted_at = COALESCE(deleted_at, now())
                 WHERE user_id = p_user_id;
                IF clerk_sync.finish_delete(p_user_id) THEN
                    v_outcome := 'applied';
                ELSE
                    v_outcome := 'deferred';
                END IF;
            END IF;
        ELSIF v_state.deleted_at IS NOT NULL THEN
            v_outcome := 'stale';
        ELSIF (p_version, p_digest COLLATE "C") <= (v_state.version, v_state.digest COLLATE "C") THEN
            v_outcome := 'stale';
        ELSIF p_email IS NULL AND p_skip_no_email THEN
            v_outcome := 'ignored';
        ELSE
            -- Address locks, in one global order so that two deliveries never wait on each
            -- other in a cycle: the address claimed before, the one claimed now, and the one
            -- the row holds (which differs for a row the application wrote itself).
            SELECT mail_address INTO v_row_addr FROM "User" WHERE id = p_user_id;
            IF p_email IS NOT NULL AND v_row_addr = p_email
               AND (v_state.email IS NULL OR v_state.email = p_email) THEN
                -- The common case, one address: lock it without a call.
                v_void := pg_advisory_xact_lock(hashtextextended(p_email, 7))::text;
            ELSE
                v_void := clerk_sync.lock_addresses(v_state.email, p_email, v_row_addr)::text;
            END IF;
            -- Meanwhile the row can only have moved to its own placeholder or been handed
            -- its claim, both under locks held now: read it again.
            SELECT mail_address INTO v_row_addr FROM "User" WHERE id = p_user_id;

            -- The role: public_metadata.role when named; when not, a role an earlier webhook
            -- set goes back to USER, and one the application set is left alone.
            IF p_role IS NOT NULL THEN
                v_role := p_role;
            ELSIF v_state.role_from_webhook THEN
                v_role := 'USER';
            END IF;

            UPDATE clerk_sync.users
               SET version = p_version, digest = p_digest, email = p_email,
                   role_from_webhook = (p_role IS NOT NULL)
             WHERE user_id = p_user_id;

            IF p_email IS NULL THEN
                v_addr := p_user_id || '@no-email.invalid';
            ELSIF v_row_addr = p_email THEN
                -- The row holds its claim already: nobody else can ("User".mail_address is
                -- unique).
                v_addr := p_email;
            ELSE
                v_addr := p_email;
                -- A holder clerk-sync never applied a version for (the application's own row)
                -- is as new as its "updatedAt", to the second on both backends.
                SELECT u.id,
                       CASE WHEN s.version >= 0 THEN s.version
                            ELSE (extract(epoch FROM date_trunc('second', u."updatedAt")) * 1000)::BIGINT
                       END,
                       COALESCE(s.deleted_at IS NOT NULL, false),
                       s.email,
                       COALESCE(s.version >= 0, false)
                  INTO v_holder, v_holder_version, v_holder_dead, v_holder_claim, v_holder_known
                  FROM "User" u LEFT JOIN clerk_sync.users s ON s.user_id = u.id
                 WHERE u.mail_address = p_email AND u.id <> p_user_id;
                IF v_holder IS NOT NULL THEN
                    IF v_holder_dead
                       OR (v_holder_known AND v_holder_claim IS DISTINCT FROM p_email)
                       OR (v_holder_version, v_holder COLLATE "C") < (p_version, p_user_id COLLATE "C") THEN
                        UPDATE "User" SET mail_address = v_holder || '@displaced.invalid'
                         WHERE id = v_holder AND mail_address = p_email;
                    ELSE
                        v_addr := p_user_id || '@displaced.invalid';
                    END IF;
                END IF;
            END IF;

            INSERT INTO "User" (id, name, mail_address, role, "createdAt", "updatedAt")
            VALUES (p_user_id, p_name, v_addr, COALESCE(v_role, 'USER')::"Role", p_created_at, p_updated_at)
            ON CONFLICT (id) DO UPDATE
               SET name = EXCLUDED.name,
                   mail_address = EXCLUDED.mail_address,
                   role = COALESCE(v_role::"Role", "User".role),
                   "createdAt" = EXCLUDED."createdAt",
                   "updatedAt" = EXCLUDED."updatedAt";

            -- Addresses this user let go of return to their newest remaining claimant.
            IF v_state.email IS NOT NULL AND v_state.email <> v_addr THEN
                PERFORM clerk_sync.settle_address(v_state.email);
            END IF;
            IF v_row_addr IS NOT NULL AND v_row_addr <> v_addr
               AND v_row_addr IS DISTINCT FROM v_state.email THEN
                PERFORM clerk_sync.settle_address(v_row_addr);
            END IF;
            v_outcome := 'applied';
        END IF;
    END IF;

    UPDATE clerk_sync.deliveries SET outcome = v_outcome WHERE svix_id = p_svix_id;
    RETURN v_outcome;
END $$;

CREATE FUNCTION clerk_sync.apply_batch(
    p_svix_id    TEXT[],
    p_event_type TEXT[],
    p_kind       TEXT[],
    p_user_id    TEXT[],
    p_version    BIGINT[],
    p_digest     TEXT[],
    p_name       TEXT[],
    p_email      TEXT[],
    p_role       TEXT[],
    p_created_at TIMESTAMP[],
    p_updated_at TIMESTAMP[],
    p_skip_no_email BOOLEAN
) RETURNS TEXT[]
LANGUAGE plpgsql AS $$
DECLARE
    v_outcomes TEXT[] := '{}';
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_svix_id, 1), 0) LOOP
        v_outcomes := v_outcomes || clerk_sync.apply_delivery(
            p_svix_id[i], p_event_type[i], p_kind[i], p_user_id[i], p_version[i], p_digest[i],
            p_name[i], p_email[i], p_role[i], p_created_at[i], p_updated_at[i], p_skip_no_email);
    END LOOP;
    RETURN v_outcomes;
END $$;
