-- Conversations: a user's messages in threads. Every message gets the conversation it
-- belongs to; the messages already kept (including a table left by the original Go
-- service) become one conversation per user, "Earlier messages". Runs on MySQL 8 and
-- MariaDB 10.11, and again after a failure part way: each step is a no-op where done.
--
-- Ids are UUIDs made by the service. `external_key` is a client's own name for a
-- conversation (the /v1 API's X-Conversation-Id), unique per user. `updated_at` is the
-- time of the last message: the sidebar lists by it, through the (user_id, updated_at,
-- id) index. `message_count` is kept in step by the transaction that saves messages.
CREATE TABLE IF NOT EXISTS conversations (
  id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
  user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  title VARCHAR(255) NOT NULL DEFAULT '',
  external_key VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  message_count BIGINT NOT NULL DEFAULT 0,
  UNIQUE KEY uq_conversations_user_id_external_key (user_id, external_key),
  KEY idx_conversations_user_id_updated_at_id (user_id, updated_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- MySQL 8 has no ADD COLUMN IF NOT EXISTS (MariaDB has): see 0003.
SET @migration = IF(
  (SELECT COUNT(*) FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = 'chat_history'
      AND column_name = 'conversation_id') = 0,
  'ALTER TABLE chat_history ADD COLUMN conversation_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL',
  'DO 0');
PREPARE migration FROM @migration;
EXECUTE migration;
DEALLOCATE PREPARE migration;

-- One conversation per user for the messages that have none. Its id is derived from the
-- user id (an MD5 shaped as a UUID), so a second run finds the same conversation.
INSERT INTO conversations (id, user_id, title, created_at, updated_at, message_count)
SELECT earlier.id, earlier.user_id, 'Earlier messages', earlier.first_at, earlier.last_at,
       earlier.messages
FROM (
  SELECT CONVERT(INSERT(INSERT(INSERT(INSERT(MD5(CONCAT('conversation:', user_id)),
           21, 0, '-'), 17, 0, '-'), 13, 0, '-'), 9, 0, '-') USING ascii) COLLATE ascii_bin AS id,
         user_id, MIN(created_at) AS first_at, MAX(created_at) AS last_at,
         COUNT(*) AS messages
  FROM chat_history
  WHERE conversation_id IS NULL
  GROUP BY user_id
) AS earlier
LEFT JOIN conversations AS existing ON existing.id = earlier.id
WHERE existing.id IS NULL;

UPDATE chat_history
SET conversation_id = CONVERT(INSERT(INSERT(INSERT(INSERT(MD5(CONCAT('conversation:', user_id)),
      21, 0, '-'), 17, 0, '-'), 13, 0, '-'), 9, 0, '-') USING ascii)
WHERE conversation_id IS NULL;

SET @migration = IF(
  (SELECT COUNT(*) FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = 'chat_history'
      AND column_name = 'conversation_id' AND is_nullable = 'YES') = 1,
  'ALTER TABLE chat_history MODIFY conversation_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL',
  'DO 0');
PREPARE migration FROM @migration;
EXECUTE migration;
DEALLOCATE PREPARE migration;

-- A conversation's messages in order, scoped to their user: one index range.
SET @migration = IF(
  (SELECT COUNT(*) FROM information_schema.statistics
    WHERE table_schema = DATABASE() AND table_name = 'chat_history'
      AND index_name = 'idx_chat_history_user_id_conversation_id_id') = 0,
  'CREATE INDEX idx_chat_history_user_id_conversation_id_id ON chat_history (user_id, conversation_id, id)',
  'DO 0');
PREPARE migration FROM @migration;
EXECUTE migration;
DEALLOCATE PREPARE migration;
SET @migration = NULL;
