-- Brings a table created by the original Go service (utf8 or latin1, TEXT, second
-- precision, no index) up to 0001's shape. A no-op on a table 0001 created.
ALTER TABLE chat_history CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE chat_history
  MODIFY text MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
  MODIFY created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3);

-- MySQL 8 has no CREATE INDEX IF NOT EXISTS (MariaDB has): the catalogue chooses
-- between the index and a statement that does nothing, and that one is run.
SET @migration = IF(
  (SELECT COUNT(*) FROM information_schema.statistics
    WHERE table_schema = DATABASE() AND table_name = 'chat_history'
      AND index_name = 'idx_chat_history_user_id_id') = 0,
  'CREATE INDEX idx_chat_history_user_id_id ON chat_history (user_id, id)',
  'DO 0');
PREPARE migration FROM @migration;
EXECUTE migration;
DEALLOCATE PREPARE migration;
SET @migration = NULL;
