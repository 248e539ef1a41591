-- 0003: the grant of the last counting statement, on the usage row. The
-- Postgres store's set-based group commit needs it (see its 0003); this
-- store counts one request at a time and never reads it, but keeps the
-- schemas in step so that one migration list describes both.
ALTER TABLE usage ADD COLUMN last_grant INTEGER NOT NULL DEFAULT 0;
