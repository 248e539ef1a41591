-- 0002: Idempotency-Key of session creations, and an index for re-seeding
-- caches from the current periods.
--
-- A key is stored in the same transaction as the admission it belongs to,
-- with that admission's outcome, so that a retry (or a process resolving a
-- lost COMMIT reply) finds the first answer instead of deciding again.
-- Writes take turns here (BEGIN IMMEDIATE), so a row is written once, with
-- its final outcome; there is no 'pending' state as in Postgres.
CREATE TABLE idempotency_keys (
    user_id        TEXT    NOT NULL,
    key            TEXT    NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- Fingerprint of the first request's body: the same key with another
    -- body is a conflict, which the caller decides.
    request_hash   TEXT    NOT NULL,
    outcome        TEXT    NOT NULL CHECK (outcome IN ('admitted', 'rejected')),
    -- The admitted session.
    session_id     TEXT,
    -- What rejected it, so that a replay rebuilds the same 403: the plan
    -- and its limits then (-1 unlimited), the period's usage at the
    -- rejection, and the period.
    plan_name      TEXT,
    max_sessions   INTEGER,
    max_seconds    INTEGER,
    usage_sessions INTEGER,
    usage_seconds  INTEGER,
    period_start   INTEGER,
    period_end     INTEGER,
    -- The admission's time (the request's clock); keys are pruned by it.
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (user_id, key),
    CHECK ((outcome = 'admitted') = (session_id IS NOT NULL)),
    CHECK (outcome <> 'rejected' OR (plan_name IS NOT NULL AND max_sessions IS NOT NULL
        AND max_seconds IS NOT NULL AND usage_sessions IS NOT NULL AND usage_seconds IS NOT NULL
        AND period_start IS NOT NULL AND period_end IS NOT NULL))
) STRICT, WITHOUT ROWID;

-- Pruning deletes the oldest keys first.
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- ScanUsage reads the periods that have not ended yet.
CREATE INDEX usage_period_end_idx ON usage (period_end);
