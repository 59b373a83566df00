-- Marks assistant replies that were cut short (the client left mid-stream, or the
-- provider's stream broke). The column itself is added by the migration runner when
-- missing: MySQL 8 has no ADD COLUMN IF NOT EXISTS. This statement only documents it.
SELECT 1;
