-- The baseline Tally is measured against: what a user would write instead
-- of Tally — a counter row per user, locked with SELECT … FOR UPDATE, the
-- session inserted, the counter bumped, in one transaction per request.
DROP TABLE IF EXISTS bench_sessions, bench_usage;
CREATE TABLE bench_usage (
    user_id  bigint PRIMARY KEY,
    sessions bigint NOT NULL DEFAULT 0
);
CREATE TABLE bench_sessions (
    id         bigserial PRIMARY KEY,
    user_id    bigint      NOT NULL,
    title      text        NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX ON bench_sessions (user_id, created_at DESC);
INSERT INTO bench_usage (user_id) SELECT g FROM generate_series(1, 100000) g;
VACUUM ANALYZE bench_usage;
