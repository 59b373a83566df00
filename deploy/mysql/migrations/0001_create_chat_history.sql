-- The original's table, with what it lacked: utf8mb4 end to end (Chinese, emoji),
-- room for long replies, millisecond timestamps, and an index for "recent messages
-- of one user". Runs on MySQL 8 and MariaDB 10.11.
CREATE TABLE IF NOT EXISTS chat_history (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_id VARCHAR(64) NOT NULL,
  role ENUM('user','assistant') NOT NULL,
  text MEDIUMTEXT NOT NULL,
  created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  KEY idx_chat_history_user_id_id (user_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
