-- The process that delivers a queued row. One process owns a SQLite file, so this is always
-- the same; the column keeps the statements alike on SQLite and PostgreSQL.
ALTER TABLE outbox ADD COLUMN owner TEXT;
