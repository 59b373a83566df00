-- User ids are exact, as Redis keys and accounts (0004) are: under the table's
-- case-insensitive collation, listing "ALICE" read alice's messages from MySQL. The
-- binary collation compares ids byte for byte; the index is rebuilt with the column.
-- Runs on MySQL 8 and MariaDB 10.11; a no-op in effect on a column already binary.
ALTER TABLE chat_history
  MODIFY user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
