-- Marks assistant replies that were cut short (the client left mid-stream, or the
-- provider's stream broke). MySQL 8 has no ADD COLUMN IF NOT EXISTS (MariaDB has):
-- the catalogue chooses between the column and a statement that does nothing, and
-- that one is run.
SET @migration = IF(
  (SELECT COUNT(*) FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = 'chat_history'
      AND column_name = 'incomplete') = 0,
  'ALTER TABLE chat_history ADD COLUMN incomplete BOOLEAN NOT NULL DEFAULT FALSE',
  'DO 0');
PREPARE migration FROM @migration;
EXECUTE migration;
DEALLOCATE PREPARE migration;
SET @migration = NULL;
