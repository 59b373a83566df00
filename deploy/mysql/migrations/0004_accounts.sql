-- Accounts: users and their API keys. Ids are ASCII compared byte for byte (`ascii_bin`),
-- as Redis compares its keys: with the default case-insensitive collation "Alice" would
-- find alice's row. An API key is kept only as the SHA-256 of the whole key; `prefix`
-- is its visible start, shown in listings. Runs on MySQL 8 and MariaDB 10.11.
CREATE TABLE IF NOT EXISTS users (
  user_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
  -- An argon2id PHC string; NULL for a user who signs in with keys only.
  password_hash VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL,
  -- Overrides of DAILY_LIMIT and RATE_LIMIT_PER_MINUTE; NULL keeps the default.
  daily_limit BIGINT NULL,
  rate_limit_per_minute INT UNSIGNED NULL,
  disabled BOOLEAN NOT NULL DEFAULT FALSE,
  created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS api_keys (
  key_id VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
  user_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  name VARCHAR(100) NOT NULL,
  prefix VARCHAR(48) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  secret_hash BINARY(32) NOT NULL,
  created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  last_used_at DATETIME(3) NULL,
  revoked_at DATETIME(3) NULL,
  KEY idx_api_keys_user_id (user_id),
  CONSTRAINT fk_api_keys_user_id FOREIGN KEY (user_id) REFERENCES users (user_id)
    ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
