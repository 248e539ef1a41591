-- 0005: the epoch each session was admitted under. The Postgres store
-- fences cluster admissions with partition epochs (see its 0005); this
-- store is single-node only, admits under epoch 0 alone and keeps no
-- partition epochs, but keeps the sessions' columns in step with Postgres
-- so that one column list (persistence/columns.go) and one audit
-- (tools/verify) serve both.
ALTER TABLE sessions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
