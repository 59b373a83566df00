-- Exactly-once saves: every message saved carries a key the caller chose (the chat's
-- request id and the message's place in the save), unique per user, so a retried save,
-- or an outbox entry drained after its first attempt did commit, adds nothing. Rows
-- saved before keys existed keep NULL, which a unique key allows any number of times
-- on MySQL 8 and MariaDB alike. Each step is a no-op where done (see 0003).
SET @migration = IF(
  (SELECT COUNT(*) FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = 'chat_history'
      AND column_name = 'save_key') = 0,
  'ALTER TABLE chat_history ADD COLUMN save_key VARCHAR(80) CHARACTER SET ascii COLLATE ascii_bin NULL',
  'DO 0');
PREPARE migration FROM @migration;
EXECUTE migration;
DEALLOCATE PREPARE migration;

SET @migration = IF(
  (SELECT COUNT(*) FROM information_schema.statistics
    WHERE table_schema = DATABASE() AND table_name = 'chat_history'
      AND index_name = 'uq_chat_history_user_id_save_key') = 0,
  'ALTER TABLE chat_history ADD UNIQUE KEY uq_chat_history_user_id_save_key (user_id, save_key)',
  'DO 0');
PREPARE migration FROM @migration;
EXECUTE migration;
DEALLOCATE PREPARE migration;
SET @migration = NULL;
