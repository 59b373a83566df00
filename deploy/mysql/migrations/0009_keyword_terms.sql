-- Per user and term, how many of the user's indexed messages hold the term (BM25's
-- document frequency), kept by the keyword service beside the postings. A search reads
-- it first: a term's exact weight without counting its postings, and, for retrieval into
-- a prompt, which terms are in so many of the user's messages that they tell none apart
-- and need not be read at all. Filled here from the postings indexed so far.
CREATE TABLE IF NOT EXISTS keyword_terms (
  user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  term VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  docs BIGINT NOT NULL,
  PRIMARY KEY (user_id, term)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT IGNORE INTO keyword_terms (user_id, term, docs)
SELECT user_id, term, COUNT(*) FROM keyword_postings GROUP BY user_id, term;
