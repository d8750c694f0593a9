DROP TABLE clerk_sync.dead_letter_drops;
DROP TABLE clerk_sync.dead_letters;
