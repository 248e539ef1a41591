-- 0002: Idempotency-Key of session creations, and an index for re-seeding
-- caches from the current periods.
--
-- A key is stored in the same transaction as the admission it belongs to,
-- with that admission's outcome, so that a retry (or a process resolving a
-- lost COMMIT reply) finds the first answer instead of deciding again.
-- Inside its transaction a row is first 'pending': that claim is what makes
-- a concurrent request with the same key wait (on the primary key) for this
-- one to commit or roll back. The same transaction always settles it to
-- 'admitted' or 'rejected' before it commits, so other transactions never
-- see 'pending'.
CREATE TABLE idempotency_keys (
    user_id        text        NOT NULL,
    key            text        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    -- Fingerprint of the first request's body: the same key with another
    -- body is a conflict, which the caller decides.
    request_hash   text        NOT NULL,
    outcome        text        NOT NULL CHECK (outcome IN ('pending', 'admitted', 'rejected')),
    -- The admitted session.
    session_id     text,
    -- What rejected it, so that a replay rebuilds the same 403: the plan
    -- and its limits then (-1 unlimited), the period's usage at the
    -- rejection, and the period.
    plan_name      text,
    max_sessions   bigint,
    max_seconds    bigint,
    usage_sessions bigint,
    usage_seconds  bigint,
    period_start   timestamptz,
    period_end     timestamptz,
    -- The admission's time (the request's clock); keys are pruned by it.
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (user_id, key),
    CHECK ((outcome = 'admitted') = (session_id IS NOT NULL)),
    CHECK (outcome <> 'rejected' OR (plan_name IS NOT NULL AND max_sessions IS NOT NULL
        AND max_seconds IS NOT NULL AND usage_sessions IS NOT NULL AND usage_seconds IS NOT NULL
        AND period_start IS NOT NULL AND period_end IS NOT NULL))
);

-- Pruning deletes the oldest keys first, in bounded batches.
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- ScanUsage reads the periods that have not ended yet. period_end never
-- changes after the row is created, so counting updates stay HOT.
CREATE INDEX usage_period_end_idx ON usage (period_end);
