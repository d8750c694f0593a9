DROP TABLE clerk_sync_dead_letter_drops;
DROP TABLE clerk_sync_dead_letters;
