-- 0001: users, their per-period usage, and their sessions.
--
-- Times are INTEGER unix microseconds (UTC), so that ordering and equality
-- are exact and match Postgres's timestamptz precision. STRICT tables refuse
-- a value of the wrong type instead of storing it.

CREATE TABLE users (
    id             TEXT    PRIMARY KEY,
    plan           TEXT    NOT NULL,
    billing_anchor INTEGER NOT NULL,
    -- Bumped by every change of plan or anchor; admissions are fenced on it.
    version        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;

-- One row per user and billing period; admissions count sessions here with
-- a conditional UPDATE.
CREATE TABLE usage (
    user_id      TEXT    NOT NULL REFERENCES users (id),
    period_start INTEGER NOT NULL,
    period_end   INTEGER NOT NULL,
    sessions     INTEGER NOT NULL CHECK (sessions >= 0),
    seconds      INTEGER NOT NULL CHECK (seconds >= 0),
    version      INTEGER NOT NULL,
    PRIMARY KEY (user_id, period_start)
) STRICT;

CREATE TABLE sessions (
    id               TEXT    PRIMARY KEY,
    user_id          TEXT    NOT NULL REFERENCES users (id),
    title            TEXT    NOT NULL,
    language         TEXT    NOT NULL,
    stt_provider     TEXT    NOT NULL,
    status           TEXT    NOT NULL
                     CHECK (status IN ('created', 'uploading', 'completed', 'failed')),
    -- NULL until the session completes; a completed session always has one.
    duration_seconds INTEGER CHECK (duration_seconds >= 0),
    -- The period the session was admitted in: its seconds count there.
    period_start     INTEGER NOT NULL,
    -- The audit trail of the fence (tally verify): the session's ordinal in
    -- its period when it was admitted, and the plan's max_sessions then
    -- (-1 unlimited). seq <= max_sessions must hold for every row.
    seq              INTEGER NOT NULL CHECK (seq >= 1),
    max_sessions     INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    CHECK ((status = 'completed') = (duration_seconds IS NOT NULL))
) STRICT;

-- A user's sessions, newest first, paged by (created_at, id).
CREATE INDEX sessions_user_created_idx ON sessions (user_id, created_at DESC, id DESC);
