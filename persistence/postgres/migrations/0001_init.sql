-- 0001: users, their per-period usage, and their sessions.
--
-- Times are timestamptz (microsecond precision, UTC on the way in and out).
-- Counters are bigint and carry a version that rises with every change, so
-- that caches can refuse to overwrite a newer value with an older one.

CREATE TABLE users (
    id             text        PRIMARY KEY,
    plan           text        NOT NULL,
    billing_anchor timestamptz NOT NULL,
    -- Bumped by every change of plan or anchor; admissions are fenced on it.
    version        bigint      NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);

-- One row per user and billing period. Admissions count sessions here with
-- a conditional UPDATE, which is what makes the limits exact under any
-- concurrency.
CREATE TABLE usage (
    user_id      text        NOT NULL REFERENCES users (id),
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    sessions     bigint      NOT NULL CHECK (sessions >= 0),
    seconds      bigint      NOT NULL CHECK (seconds >= 0),
    version      bigint      NOT NULL,
    PRIMARY KEY (user_id, period_start)
);

CREATE TABLE sessions (
    id               text        PRIMARY KEY,
    user_id          text        NOT NULL REFERENCES users (id),
    title            text        NOT NULL,
    language         text        NOT NULL,
    stt_provider     text        NOT NULL,
    status           text        NOT NULL
                     CHECK (status IN ('created', 'uploading', 'completed', 'failed')),
    -- NULL until the session completes; a completed session always has one.
    duration_seconds bigint      CHECK (duration_seconds >= 0),
    -- The period the session was admitted in: its seconds count there.
    period_start     timestamptz NOT NULL,
    -- The audit trail of the fence (tally verify): the session's ordinal in
    -- its period when it was admitted, and the plan's max_sessions then
    -- (-1 unlimited). seq <= max_sessions must hold for every row.
    seq              bigint      NOT NULL CHECK (seq >= 1),
    max_sessions     bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    CHECK ((status = 'completed') = (duration_seconds IS NOT NULL))
);

-- A user's sessions, newest first, paged by (created_at, id).
CREATE INDEX sessions_user_created_idx ON sessions (user_id, created_at DESC, id DESC);
