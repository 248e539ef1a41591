-- 0004: the audit trail of admin changes (docs/contract.md, "Audit trail");
-- the twin of the Postgres store's 0004, which explains each column.
--
-- One row per admin request that wrote something, inserted in the write
-- transaction that makes the change: they commit together or not at all.
-- AUTOINCREMENT: an id is never handed out twice, even after the last row
-- was deleted by hand.
CREATE TABLE user_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      TEXT    NOT NULL REFERENCES users (id),
    session_id   TEXT    REFERENCES sessions (id),
    kind         TEXT    NOT NULL
                 CHECK (kind IN ('put_user', 'reset_usage', 'complete_session', 'fail_session')),
    actor        TEXT    NOT NULL CHECK (actor <> ''),
    request_id   TEXT    NOT NULL,
    occurred_at  INTEGER NOT NULL,
    user_version INTEGER,
    before       TEXT    CHECK (before IS NULL OR json_valid(before)),
    after        TEXT    NOT NULL CHECK (json_valid(after)),
    CHECK ((session_id IS NULL) = (kind IN ('put_user', 'reset_usage'))),
    CHECK ((user_version IS NULL) = (session_id IS NOT NULL))
) STRICT;

CREATE INDEX user_events_user_idx ON user_events (user_id, occurred_at DESC, id DESC);
CREATE UNIQUE INDEX user_events_session_idx ON user_events (session_id) WHERE session_id IS NOT NULL;

CREATE TABLE audit_baseline (
    user_id TEXT    PRIMARY KEY REFERENCES users (id),
    version INTEGER NOT NULL
) STRICT;
INSERT INTO audit_baseline (user_id, version)
SELECT id, version FROM users
WHERE version > 1 OR plan <> 'free' OR billing_anchor <> created_at;

CREATE TABLE audit_baseline_sessions (
    session_id TEXT PRIMARY KEY REFERENCES sessions (id)
) STRICT, WITHOUT ROWID;
INSERT INTO audit_baseline_sessions (session_id)
SELECT id FROM sessions WHERE status IN ('completed', 'failed');
