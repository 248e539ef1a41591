-- 0003: schema for the set-based group commit (admit_bulk.go).
--
-- last_grant: a key-less group commit decides every (user, period) of its
-- batch in one UPDATE that computes each row's grant from the row itself
-- (as many of the batch's requests as still fit). UPDATE … RETURNING shows
-- only the new row, so the grant is stored with it, for the statement that
-- inserts the admitted sessions and for the caller. It means something only
-- to the transaction that set it.
ALTER TABLE usage ADD COLUMN last_grant bigint NOT NULL DEFAULT 0;

-- sessions.user_id no longer has a foreign key. Its per-row check (a
-- trigger that share-locks the user row for every inserted session) cost
-- about 15% of durable admissions per second (BenchmarkAdmitBatch), and it
-- guarded nothing the admission does not already: a session is inserted
-- only by the statement that counts it on its usage row, whose user_id
-- references users, under the user's share lock; users are never deleted.
-- tally verify checks that every session counts on a usage row.
ALTER TABLE sessions DROP CONSTRAINT sessions_user_id_fkey;
