-- Brings a table created by the original Go service (utf8 or latin1, TEXT, second
-- precision) up to 0001's shape. A no-op on a table 0001 created. The index is
-- added by the migration runner when missing (MySQL 8 has no CREATE INDEX IF NOT EXISTS).
ALTER TABLE chat_history CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE chat_history
  MODIFY text MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
  MODIFY created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3);
