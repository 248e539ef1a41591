-- 0004: the audit trail of admin changes (docs/contract.md, "Audit trail").
--
-- One row per admin request that wrote something: a PUT of a user, a usage
-- reset, a session completed or failed by an admin. The row is inserted in
-- the transaction that makes the change (persistence/users.go,
-- persistence/sessions.go), so a change never commits without its event and
-- an event never commits without its change. Rows are never updated or
-- deleted by the service.
CREATE TABLE user_events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      text        NOT NULL REFERENCES users (id),
    -- The session of a session change; NULL for a user change.
    session_id   text        REFERENCES sessions (id),
    kind         text        NOT NULL
                 CHECK (kind IN ('put_user', 'reset_usage', 'complete_session', 'fail_session')),
    -- The admin credential's name. A change with nobody behind it must not
    -- commit: this check fails its transaction.
    actor        text        NOT NULL CHECK (actor <> ''),
    request_id   text        NOT NULL,
    -- The change's time: what the changed rows were stamped with.
    occurred_at  timestamptz NOT NULL,
    -- The user's version the change left (user changes, which all bump
    -- it); tally verify checks that the versions have no gap.
    user_version bigint,
    -- The state before (NULL when the change created the user) and after,
    -- as JSON documents (domain.UserState, domain.SessionState), kept as
    -- written.
    before       json,
    after        json        NOT NULL,
    CHECK ((session_id IS NULL) = (kind IN ('put_user', 'reset_usage'))),
    CHECK ((user_version IS NULL) = (session_id IS NOT NULL))
);

-- A user's events, newest first, paged by (occurred_at, id).
CREATE INDEX user_events_user_idx ON user_events (user_id, occurred_at DESC, id DESC);
-- A session is completed or failed once: at most one event each.
CREATE UNIQUE INDEX user_events_session_idx ON user_events (session_id) WHERE session_id IS NOT NULL;

-- Where the trail begins, for tally verify. Users whose row already
-- differed from how provisioning leaves it (version 1, plan 'free' — the
-- domain's DefaultPlan —, anchored at its creation) were changed before
-- the trail: their changes up to this version have no event.
CREATE TABLE audit_baseline (
    user_id text   PRIMARY KEY REFERENCES users (id),
    version bigint NOT NULL
);
INSERT INTO audit_baseline (user_id, version)
SELECT id, version FROM users
WHERE version > 1 OR plan <> 'free' OR billing_anchor <> created_at;

-- Sessions completed or failed before the trail began have no event
-- either. Listed by id rather than by a time: updated_at comes from the
-- service's clock, the migration's time from the database's.
CREATE TABLE audit_baseline_sessions (
    session_id text PRIMARY KEY REFERENCES sessions (id)
);
INSERT INTO audit_baseline_sessions (session_id)
SELECT id FROM sessions WHERE status IN ('completed', 'failed');
