-- Applies several deliveries in order, in the caller's one transaction (bulk replay).
-- Each element goes through clerk_sync.apply_delivery exactly as a single delivery would;
-- the i-th outcome answers the i-th delivery.
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
