-- The check a mapped table's combined write (src/db/pg_mapped.rs) makes in the same statement,
-- so that the COMMIT pipelined after it commits only a write that went through whole: it fails
-- the statement, as clerk_sync.write_one does, when a row the plan updates was deleted (or a
-- delivery it records was recorded) since the locks were taken. An executor's check, no rule.
CREATE FUNCTION clerk_sync.written_or_retry(
    updated BIGINT, expected_updated BIGINT, recorded BIGINT, expected_recorded BIGINT
) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
BEGIN
    IF updated <> expected_updated THEN
        RAISE EXCEPTION 'a row of the plan was deleted concurrently; retry'
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF recorded <> expected_recorded THEN
        RAISE EXCEPTION 'a delivery of the plan was recorded concurrently; retry'
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN true;
END
$$;
