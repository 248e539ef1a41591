-- pgbench script: one admission the row-lock way, for a random user of 100k
-- (set -D uid_max=1 for one hot user).
\set uid random(1, :uid_max)
BEGIN;
SELECT sessions FROM bench_usage WHERE user_id = :uid FOR UPDATE;
INSERT INTO bench_sessions (user_id, title, created_at) VALUES (:uid, 'Weekly sync', now());
UPDATE bench_usage SET sessions = sessions + 1 WHERE user_id = :uid;
COMMIT;
