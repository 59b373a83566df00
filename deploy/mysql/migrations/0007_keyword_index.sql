-- The keyword service's inverted index of the saved messages (services/keyword): a row per
-- indexed message with its length in terms, a posting per (user, term, message) with the
-- term's count, and per-user totals for BM25. Scoped by user in every key, so a search
-- reads one user's postings only. Rows of deleted messages are ignored at once (a search
-- joins chat_history) and removed by the service's sweep. Runs on MySQL 8 and MariaDB 10.11;
-- no full-text index (MariaDB has no ngram parser for Chinese): terms come from jieba.
CREATE TABLE IF NOT EXISTS keyword_docs (
  message_id BIGINT NOT NULL PRIMARY KEY,
  user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  terms INT NOT NULL,
  KEY idx_keyword_docs_user_id (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS keyword_postings (
  user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  term VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  message_id BIGINT NOT NULL,
  tf INT NOT NULL,
  PRIMARY KEY (user_id, term, message_id),
  KEY idx_keyword_postings_message_id (message_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS keyword_users (
  user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
  docs BIGINT NOT NULL,
  total_terms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
