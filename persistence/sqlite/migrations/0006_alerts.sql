-- 0006: usage alerts and their webhook deliveries, the transactional
-- outbox; the twin of the Postgres store's 0006, which explains each
-- column. Times are unix microseconds, as everywhere in this store.
CREATE TABLE alerts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL
                    CHECK (kind IN ('usage.threshold_crossed', 'usage.limit_reached')),
    user_id         TEXT    NOT NULL,
    plan            TEXT    NOT NULL,
    metric          TEXT    NOT NULL CHECK (metric IN ('sessions', 'minutes')),
    percent         INTEGER NOT NULL CHECK (percent BETWEEN 0 AND 100),
    used            INTEGER NOT NULL,
    limit_value     INTEGER NOT NULL,
    period_start    INTEGER NOT NULL,
    period_end      INTEGER NOT NULL,
    occurred_at     INTEGER NOT NULL,
    session_id      TEXT,
    status          TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    claim           INTEGER NOT NULL DEFAULT 0,
    claimed_until   INTEGER,
    last_attempt_at INTEGER,
    last_status     INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT    NOT NULL DEFAULT '',
    delivered_at    INTEGER,
    UNIQUE (user_id, period_start, kind, metric, percent, limit_value)
) STRICT;

CREATE INDEX alerts_pending_idx ON alerts (id) WHERE status = 'pending';
CREATE INDEX alerts_pending_user_idx ON alerts (user_id, id) WHERE status = 'pending';
CREATE INDEX alerts_failed_idx ON alerts (id) WHERE status = 'failed';

-- percents: a JSON array of integers; [] is alerts off.
CREATE TABLE alert_settings (
    since    INTEGER PRIMARY KEY,
    percents TEXT    NOT NULL CHECK (json_valid(percents))
) STRICT;
