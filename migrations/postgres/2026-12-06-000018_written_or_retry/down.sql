DROP FUNCTION clerk_sync.written_or_retry(BIGINT, BIGINT, BIGINT, BIGINT);
